"""The project's own exceptions.

Every error that reaches a user derives from :class:`ResShiftError`, so hosts (ComfyUI, the WebUI, the CLI) can catch
one class and show its message as it is: each message says what was expected, what was found and what to do.
"""

from __future__ import annotations


class ResShiftError(Exception):
    """Base class of every error this project raises."""


class CheckpointError(ResShiftError):
    """A checkpoint file cannot be used (unreadable, unsafe, wrong kind or unknown)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that would run code on load; it is refused, never executed."""


class CorruptCheckpointError(CheckpointError):
    """A truncated or damaged file."""


class WrongModelKindError(CheckpointError):
    """A UNet file given where an autoencoder is expected, or the other way round."""


class UnknownCheckpointError(CheckpointError):
    """A file whose tensors match no network of the ResShift family."""


class UnknownScheduleError(ResShiftError):
    """The noise schedule of a UNet cannot be known from its weights alone."""


class InputImageError(ResShiftError, ValueError):
    """An input image of the wrong shape, type, range or size."""


class CancelledError(ResShiftError):
    """The run was cancelled between two steps; nothing partial is returned."""
