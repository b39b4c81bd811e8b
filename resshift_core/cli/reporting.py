"""What the user sees of a run: one line per file, the final summary, and progress bars."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from .jobs import Job


class Reporter:
    """Counts outcomes and prints one line per file: results to stdout, problems to stderr (through tqdm, so
    that progress bars are not torn)."""

    def __init__(self, prefix: str = "", quiet: bool = False):
        self.prefix = prefix
        self.quiet = quiet
        self.written = 0
        self.skipped = 0
        self.failures: list[tuple[str, str]] = []
        self.ignored: list[tuple[str, str]] = []

    def _print(self, message: str, stream) -> None:
        from tqdm import tqdm

        # One write per line: the ranks of a torchrun share the terminal, and a line written in two pieces (text,
        # then its newline) could be cut by another rank's line.
        tqdm.write(self.prefix + message + "\n", file=stream, end="")

    def wrote(self, job: Job) -> None:
        self.written += 1
        if not self.quiet:
            self._print(f"written: {job.output}", sys.stdout)

    def skip(self, job: Job) -> None:
        self.skipped += 1
        if not self.quiet:
            self._print(f"skipped (output exists, --overwrite to redo): {job.output}", sys.stdout)

    def fail(self, source: Path, reason: str) -> None:
        self.failures.append((str(source), reason))
        self._print(f"failed: {source}: {reason}", sys.stderr)

    def note(self, message: str) -> None:
        """Something the user should know that is not a failure (e.g. sub-folders left out without -r)."""
        self._print(f"note: {message}", sys.stderr)

    def ignore(self, source: Path, reason: str) -> None:
        self.ignored.append((str(source), reason))
        self._print(f"skipped (not an image): {source}: {reason}", sys.stderr)

    def counts(self) -> dict:
        return {"written": self.written, "skipped": self.skipped, "failures": self.failures, "ignored": self.ignored}


def summarise(all_counts: Sequence[dict], output_dir: Path, seconds: float) -> str:
    written = sum(c["written"] for c in all_counts)
    skipped = sum(c["skipped"] for c in all_counts)
    failures = [f for c in all_counts for f in c["failures"]]
    ignored = sum(len(c["ignored"]) for c in all_counts)
    parts = [f"{written} written", f"{skipped} skipped (output exists)", f"{len(failures)} failed"]
    if ignored:
        parts.append(f"{ignored} not an image")
    ranks = f" on {len(all_counts)} ranks" if len(all_counts) > 1 else ""
    lines = [f"done{ranks} in {seconds:.1f} s: {', '.join(parts)}; output folder: {output_dir}"]
    lines.extend(f"  failed: {source}: {reason}" for source, reason in failures)
    return "\n".join(lines)


class StepBar:
    """A tqdm bar over the sampling steps of one batch, fed by the pipeline's ``callback``."""

    def __init__(self, enabled: bool, description: str):
        self.enabled = enabled
        self.description = description
        self.bar = None

    def __call__(self, progress) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=progress.total, desc=self.description, unit="call", leave=False, file=sys.stderr)
        self.bar.update(progress.done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
