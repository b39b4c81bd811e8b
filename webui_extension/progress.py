"""The core's progress and cancellation hooks wired to the WebUI's ``shared.state``.

``/sdapi/v1/progress`` (and the progress bar) compute ``job_no / job_count + sampling_step / sampling_steps /
job_count``. The Extras tab advances ``job_no`` *before* it processes an image, so during the only image of a single
request the bar would already read 100%; while a run inside Extras is in progress the bridge counts that image as not
done yet, and puts the counter back afterwards.
"""

from __future__ import annotations

import threading

from resshift_core.images import tensor_to_pil

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


class Bridge:
    """Context manager around one core run: moves ``sampling_step`` / ``sampling_steps`` (the core's whole-run
    network-call counts), shows the core's cheap x0 preview as the live preview, and answers the core's cancel polls
    from ``interrupted`` / ``skipped``."""

    def __init__(self, state, previews: bool = False):
        self.state = state
        self.previews = previews
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

    def loading(self, text: str) -> None:
        """While the model loads (the first call reads and maybe downloads it): the bar at 0 with what happens."""
        self.state.textinfo = text
        self.state.sampling_steps = max(1, int(getattr(self.state, "sampling_steps", 0) or 0))
        self.state.sampling_step = 0

    def on_step(self, step) -> None:
        """Called by the core after every network call (encoder, UNet per tile and step, decoder)."""
        self.state.sampling_steps = step.total
        self.state.sampling_step = step.done
        preview = step.preview() if self.previews else None
        if preview is not None:
            self.state.assign_current_image(tensor_to_pil(preview)[0])

    def should_stop(self) -> bool:
        return bool(self.state.interrupted or self.state.skipped)
