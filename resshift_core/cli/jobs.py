"""Turning the command line's inputs into jobs: which files, where their results go, which go together."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..imageio import IMAGE_EXTENSIONS
from .common import UsageError


@dataclass
class Job:
    """One input file and where its result goes."""

    source: Path
    output: Path


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    ignored: list[tuple[Path, str]] = field(default_factory=list)  # files in folders that are not images
    conflicts: list[tuple[Path, str]] = field(default_factory=list)  # inputs that cannot be done at all
    skipped_folders: list[Path] = field(default_factory=list)  # sub-folders left out without -r


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk_folder(folder: Path, recursive: bool, excluded: set[Path]) -> tuple[list[Path], list[Path]]:
    """(files, skipped sub-folders) of a folder, sorted; sub-folders are walked only if recursive. Hidden entries
    and the excluded paths (the output folder, the masks) are left out."""
    found = []
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d) and (root_path / d).resolve() not in excluded)
        found.extend(root_path / name for name in sorted(files)
                     if not _is_hidden(name) and (root_path / name).resolve() not in excluded)
        if not recursive:
            return found, [root_path / d for d in dirs]
    return found, []


def plan_jobs(inputs: Sequence[str | os.PathLike], output_dir: Path, *, recursive: bool, extension: str,
              excluded: Sequence[Path] = ()) -> Plan:
    """Turn the command-line inputs into jobs: ``<output_dir>/<relative folder>/<stem><extension>``.

    Files named on the command line are always tried; in folders only files with an image extension are, the
    others are listed in ``plan.ignored``. Two inputs that would write the same output are a conflict (the later
    one is not done), as is an output that would replace its own input.
    """
    plan = Plan()
    excluded_resolved = {Path(p).resolve() for p in excluded}
    seen_sources: set[Path] = set()
    claimed: dict[Path, Path] = {}
    for entry in inputs:
        entry = Path(entry)
        if entry.is_dir():
            candidates = []
            files, skipped = _walk_folder(entry, recursive, excluded_resolved)
            plan.skipped_folders.extend(skipped)
            for file in files:
                if file.suffix.lower() in IMAGE_EXTENSIONS:
                    candidates.append((file, file.relative_to(entry)))
                else:
                    plan.ignored.append((file, f"not an image file (extension '{file.suffix or 'none'}')"))
        elif entry.is_file():
            candidates = [(entry, Path(entry.name))]
        else:
            raise UsageError(f"input {entry} does not exist")
        for source, relative in candidates:
            resolved = source.resolve()
            if resolved in seen_sources:
                continue  # named twice (a file and its folder): done once
            seen_sources.add(resolved)
            output = output_dir / relative.parent / (relative.stem + extension)
            output_resolved = output.resolve()
            if output_resolved == resolved:
                reason = f"its output {output} would replace the input itself; choose another output folder"
                plan.conflicts.append((source, reason))
            elif output_resolved in claimed:
                reason = f"its output {output} is already the output of {claimed[output_resolved]}; rename one"
                plan.conflicts.append((source, reason))
            else:
                claimed[output_resolved] = source
                plan.jobs.append(Job(source, output))
    return plan


def _find_mask(mask_path: Path, job: Job, input_roots: Sequence[Path]) -> Path | None:
    """The mask of an input: ``mask_path`` itself if it is a file, else the file of the same stem in the mask
    folder (first in the same sub-folder as the input, then at the top)."""
    if mask_path.is_file():
        return mask_path
    relative_parent = Path()
    for root in input_roots:
        if root.is_dir():
            try:
                relative_parent = job.source.relative_to(root).parent
                break
            except ValueError:
                continue
    for folder in dict.fromkeys([mask_path / relative_parent, mask_path]):
        if folder.is_dir():
            for candidate in sorted(folder.iterdir()):
                if candidate.stem == job.source.stem and candidate.suffix.lower() in IMAGE_EXTENSIONS:
                    return candidate
    return None


def _probe_size(path: Path) -> tuple[int, int] | None:
    """(width, height) after EXIF orientation, from the header only; None if unreadable (reported later)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except (OSError, SyntaxError, ValueError, struct.error):
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def group_batches(jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
    """Batches of up to ``batch_size`` same-size images, in the order of first appearance of each size."""
    if batch_size <= 1:
        return [[job] for job in jobs]
    by_size: dict[object, list[Job]] = {}
    for number, job in enumerate(jobs):
        size = _probe_size(job.source)
        by_size.setdefault(size if size is not None else ("unreadable", number), []).append(job)
    return [group[i:i + batch_size] for group in by_size.values() for i in range(0, len(group), batch_size)]
