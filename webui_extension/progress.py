"""The core's progress and cancellation hooks wired to the WebUI's ``shared.state``.

``/sdapi/v1/progress`` (and the progress bar) compute ``job_no / job_count + sampling_step / sampling_steps /
job_count``. The Extras tab advances ``job_no`` *before* it processes an image, so during the only image of a single
request the bar would already read 100%; while a run inside Extras is in progress the bridge counts that image as not
done yet, and puts the counter back afterwards.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_extras_image: tuple | None = None  # (job identity, job_no) of the Extras image being processed
_seeds: dict[tuple, list[int]] = {}  # job identity -> seeds used in that job, in order


def job_identity(state) -> tuple:
    """What tells one WebUI job from the next (``begin()`` sets both)."""
    return getattr(state, "job_timestamp", None), getattr(state, "time_start", None)


def mark_extras_image(state) -> None:
    """Called by our postprocessing script before the Extras scripts process an image."""
    global _extras_image
    with _lock:
        _extras_image = (job_identity(state), state.job_no)


def record_seed(state, seed: int) -> None:
    with _lock:
        identity = job_identity(state)
        for stale in [key for key in _seeds if key != identity]:
            del _seeds[stale]
        _seeds.setdefault(identity, []).append(int(seed))


def take_seeds(state) -> list[int]:
    """The seeds used since the last call in the current job (and forgets them)."""
    with _lock:
        return _seeds.pop(job_identity(state), [])


def seeds_infotext(seeds: list[int]) -> str | None:
    """Infotext value: one seed, or the seeds of several runs in order."""
    if not seeds:
        return None
    unique = list(dict.fromkeys(seeds))
    return str(unique[0]) if len(unique) == 1 else ", ".join(str(seed) for seed in seeds)


def step_counts(step) -> tuple[int, int]:
    """(done, total) network calls of the whole run from a core ``StepProgress``."""
    done, total = getattr(step, "done", None), getattr(step, "total", None)
    if done is not None and total is not None:
        return int(done), int(total)
    # Before the core reports whole-run counts: calls are (step - 1) * tiles + tile of steps * tiles.
    return (step.step - 1) * step.total_tiles + step.tile, step.total_steps * step.total_tiles


class Bridge:
    """Context manager around one core run: moves ``sampling_step`` / ``sampling_steps`` and answers the core's
    cancel polls from ``interrupted`` / ``skipped``."""

    def __init__(self, state):
        self.state = state
        self._job_shift = 0

    def __enter__(self) -> Bridge:
        state = self.state
        with _lock:
            counted = _extras_image == (job_identity(state), state.job_no)
        if counted and state.job_no >= 1:
            self._job_shift = 1
            state.job_no -= 1
        state.sampling_step = 0
        return self

    def __exit__(self, *exc_info) -> None:
        self.state.job_no += self._job_shift
        self._job_shift = 0

    def on_step(self, step) -> None:
        done, total = step_counts(step)
        self.state.sampling_steps = total
        self.state.sampling_step = min(done, total)

    def should_stop(self) -> bool:
        return bool(self.state.interrupted or self.state.skipped)
