"""The project's own exceptions, and how their advice is worded for each front-end.

Every error that reaches a user derives from :class:`ResShiftError`, so hosts (ComfyUI, the WebUI, the CLI) can catch
one class. Each message says what was expected, what was found and what to do. Advice that names something the user
sets (a release, a file, a tile size) is written with placeholders, so that each front-end words it in its own
vocabulary: the Python API says ``release="realsr-v3"``, the command line ``--release realsr-v3``, a ComfyUI node
"the release input". ``str(error)`` is the Python API's wording; ``error.render(vocabulary)`` any other.

Placeholders in a message template:

``{arg:NAME}``
    how the front-end names the setting NAME (``release=``, ``--release``, "the release input");
``{set:NAME=VALUE}``
    how the user sets NAME to VALUE (``release="realsr-v3"``, ``--release realsr-v3``).

NAME is a canonical argument name: ``release``, ``unet``, ``autoencoder``, ``tile_size``, ``tile_overlap``,
``tiling``, ``dtype``, ``device``, ``chop_size``, ``chop_stride``, ``seed``, ``cache_dir``, ``offline``, ``mask``,
``steps``...
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_PLACEHOLDER = re.compile(r"\{(arg|set):([a-z_]+)(?:=([^}]*))?\}")


@dataclass(frozen=True)
class Vocabulary:
    """How a front-end names the settings its user controls.

    Attributes:
        names: canonical argument name -> the front-end's name for it (missing names are used as they are).
        setting: format of "set NAME to VALUE", with ``{name}`` and ``{value}``.
        quote_values: put string values in quotes (Python source does, a shell line does not).
    """

    names: Mapping[str, str] = field(default_factory=dict)
    setting: str = "{name}={value}"
    quote_values: bool = False

    def name(self, argument: str) -> str:
        return self.names.get(argument, argument)

    def set(self, argument: str, value: str) -> str:
        shown = f'"{value}"' if self.quote_values and not _is_number(value) else value
        return self.setting.format(name=self.name(argument), value=shown)

    def render(self, template: str) -> str:
        def replace(match: re.Match) -> str:
            kind, argument, value = match.groups()
            return self.name(argument) if kind == "arg" else self.set(argument, value or "")
        return _PLACEHOLDER.sub(replace, template)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


#: The Python API's wording: ``ResShiftPipeline.from_files(..., release="realsr-v3")``.
PYTHON_API = Vocabulary(names={"unet": "unet_path", "autoencoder": "autoencoder_path"}, setting="{name}={value}",
                        quote_values=True)


class ResShiftError(Exception):
    """Base class of every error this project raises.

    Args:
        message: what happened and what to do; may hold ``{arg:...}`` / ``{set:...}`` placeholders (module doc).
        **fields: structured details a front-end may use (kept as attributes).
    """

    def __init__(self, message: str = "", **fields):
        super().__init__(message)
        self.template = message
        self.fields = fields
        for name, value in fields.items():
            setattr(self, name, value)

    def render(self, vocabulary: Vocabulary = PYTHON_API) -> str:
        """The message with its advice in ``vocabulary``'s words."""
        return vocabulary.render(self.template)

    def __str__(self) -> str:
        return self.render(PYTHON_API)

    def __reduce__(self):  # rebuild with the template and fields (subclasses have other signatures)
        return _rebuild_error, (type(self), self.template, self.fields, self.__dict__)


def _rebuild_error(cls, template: str, fields: dict, state: dict) -> ResShiftError:
    error = cls.__new__(cls)
    Exception.__init__(error, template)
    error.__dict__.update(state)
    error.template, error.fields = template, fields
    return error


class InvalidArgumentError(ResShiftError, ValueError):
    """An argument outside its valid range, found before any weights are loaded.

    Attributes:
        argument: canonical name (``tile_size``, ``chop_size``, ``dtype``, ...).
        value: what was given.
        expected: the valid range or choices, in words.
    """

    def __init__(self, argument: str, value, expected: str, advice: str = ""):
        message = f"{{arg:{argument}}} must be {expected}, got {value!r}" + (f"; {advice}" if advice else "")
        super().__init__(message, argument=argument, value=value, expected=expected)


class CheckpointError(ResShiftError):
    """A checkpoint file cannot be used (unreadable, unsafe, wrong kind or unknown)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that would run code on load; it is refused, never executed."""


class CorruptCheckpointError(CheckpointError):
    """A truncated or damaged file."""


class WrongModelKindError(CheckpointError):
    """A UNet file given where an autoencoder is expected, or the other way round.

    Attributes:
        found, expected: ``"unet"`` or ``"autoencoder"``.
    """


class UnknownCheckpointError(CheckpointError):
    """A file whose tensors match no network of the ResShift family."""


class UnknownScheduleError(ResShiftError):
    """The noise schedule of a UNet cannot be known from its weights alone."""


class InputImageError(ResShiftError, ValueError):
    """An input image of the wrong shape, type, range or size."""


class CancelledError(ResShiftError):
    """The run was cancelled between two network calls; nothing partial is returned."""


@dataclass(frozen=True)
class NeededFile:
    """A weight file a run needs: its name, where it is published and where it is expected on disk."""

    name: str
    url: str
    path: Path

    def describe(self) -> str:
        return f"{self.name}: download {self.url} and save it as {self.path}"


def reason_of(error: BaseException) -> str:
    """The first line of an error's message without its closing punctuation, to be listed among other causes."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.rstrip(".:; ")


def missing_files_message(files: Sequence[NeededFile], reason: str) -> str:
    """One message that lists every missing file at once, so the user fixes them all in one go.

    ``reason`` is one or more causes joined by "; " (each without its closing full stop, see
    :func:`reason_of`); the message reads "2 weight files missing. Why: ...; ....", then one line per file."""
    reason = reason.strip().rstrip(".")
    lines = [f"{len(files)} weight file{'s' if len(files) != 1 else ''} missing. Why: {reason}. Each one:"]
    lines += [f"  - {file.describe()}" for file in files]
    return "\n".join(lines)
