"""Any output size: turning what the user asked for into model passes and one final resize.

The model upscales by exactly its own factor (x4) per pass. To reach any other size, :func:`plan_size` picks the
fewest x4 passes whose output is at least the target on both sides, then one anti-aliased downscale
(:func:`resize_exact`) brings the last pass's output to the exact target:

* x2 or x3: one x4 pass, then a downscale (also x1: one pass, downscaled back to the input size);
* x4: one pass, no resize; x16: two passes, no resize;
* x8 or x4.5: two passes (x16), then a downscale.

Why passes and then a downscale, never a bicubic upscale of the model's output: a second pass works on the first
pass's output, so each pass adds real detail, whereas an interpolated upscale only blurs; and downscaling a larger
result costs nothing in quality (the anti-aliasing filter keeps it free of moire). Why the fewest passes: each pass
multiplies the cost by about 16 and builds on what the previous one invented, so no pass is run that is not needed.

A request (:class:`OutputSize`) is a scale factor, a width and/or height, or a longest side; all empty means the
model's own scale. Front-ends build it with :func:`output_size`, where 0, None and "" all mean "not given", or
from a ``"WxH"`` / ``"Wx"`` / ``"xH"`` text with :func:`parse_size`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from .errors import InputImageError, InvalidArgumentError

#: Largest scale factor a request may ask for (x64 = three x4 passes).
MAX_SCALE = 64.0
#: Largest side, in pixels, of a requested output and of any pass's output (a 65536 x 65536 RGB image is 48 GiB
#: of float32: beyond that a request is a typo, not a wish).
MAX_SIDE = 65536

_SIZE_TEXT = re.compile(r"^\s*([0-9]*)\s*[x×*]\s*([0-9]*)\s*$", re.IGNORECASE)
_SIZE_FORMAT = "WxH, Wx or xH with positive integers"

# Requests that exclude each other: one of these groups at most may be given.
_GROUPS = (("scale",), ("size",), ("width", "height"), ("longest_side",))


@dataclass(frozen=True)
class OutputSize:
    """What the user asked for: a scale factor, or a target width and/or height, or a longest side.

    All None means the model's own scale. Values are validated on construction (a factor above 0 and at most 64,
    sides from 1 to 65536, one kind of request at most); front-ends should build it with :func:`output_size`, which
    also reads 0 / "" as "not given".

    Attributes:
        scale: output / input side, e.g. 2.0 or 1.5.
        width, height: exact output side(s) in pixels; only one of them keeps the input's aspect ratio.
        longest_side: the output's longer side in pixels, aspect ratio kept.
    """

    scale: float | None = None
    width: int | None = None
    height: int | None = None
    longest_side: int | None = None

    def __post_init__(self):
        if self.scale is not None:
            _check_scale("scale", self.scale)
        for name in ("width", "height", "longest_side"):
            value = getattr(self, name)
            if value is not None:
                _check_side(name, value)
        _check_one_request({item.name: getattr(self, item.name) for item in fields(self)})

    def is_native(self) -> bool:
        """Nothing asked: the model's own scale."""
        return all(getattr(self, item.name) is None for item in fields(self))

    def describe(self) -> str:
        """Short human text: ``"model scale"``, ``"x2"``, ``"x1.5"``, ``"2048x1536"``, ``"2048x(auto)"``,
        ``"(auto)x1536"`` or ``"longest side 2048"``."""
        if self.scale is not None:
            return f"x{self.scale:g}"
        if self.longest_side is not None:
            return f"longest side {self.longest_side}"
        if self.width is not None or self.height is not None:
            return f"{self.width or '(auto)'}x{self.height or '(auto)'}"
        return "model scale"

    def as_dict(self) -> dict:
        """The given fields only (JSON-safe; empty for the model's own scale)."""
        return {item.name: getattr(self, item.name) for item in fields(self) if getattr(self, item.name) is not None}


def parse_size(text: str) -> OutputSize:
    """``"2048x1536"`` -> width and height; ``"2048x"`` -> width only; ``"x1536"`` -> height only.

    ``x``, ``X``, ``×`` and ``*`` separate the sides; spaces around them are allowed.

    Raises:
        InvalidArgumentError: (argument ``size``) anything else, a side of 0, or a side above 65536.
    """
    match = _SIZE_TEXT.match(text) if isinstance(text, str) else None
    if match is None or not any(match.groups()):
        raise InvalidArgumentError("size", text, _SIZE_FORMAT)
    width, height = (int(group) if group else None for group in match.groups())
    if width == 0 or height == 0:
        raise InvalidArgumentError("size", text, _SIZE_FORMAT)
    if max(width or 0, height or 0) > MAX_SIDE:
        raise InvalidArgumentError("size", text, f"at most {MAX_SIDE} pixels on a side")
    return OutputSize(width=width, height=height)


def output_size(scale=None, size=None, width=None, height=None, longest_side=None) -> OutputSize:
    """The one constructor of a request from front-end values (CLI flags, node inputs, UI fields).

    For every argument, 0, None and "" mean "not given" (a ComfyUI INT or a Gradio number cannot be empty, so 0 is
    the documented "empty" everywhere); nothing given means the model's own scale.

    Args:
        scale: factor above 0 and at most 64 (a number, or a numeric text).
        size: ``"WxH"``, ``"Wx"`` or ``"xH"`` (see :func:`parse_size`), or a ``(width, height)`` pair where either
            may be 0 / None.
        width, height: exact sides in pixels, 1 to 65536 (whole numbers; ``2048.0`` and ``"2048"`` are accepted).
        longest_side: the output's longer side in pixels, 1 to 65536.

    Raises:
        InvalidArgumentError: a value out of range, or more than one kind of request (a scale together with a size,
            a size text together with a width, a longest side together with a width or height).
    """
    scale = _number("scale", scale)
    width, height, longest_side = (_whole(name, value) for name, value in
                                   (("width", width), ("height", height), ("longest_side", longest_side)))
    if scale is not None:
        _check_scale("scale", scale)
    for name, value in (("width", width), ("height", height), ("longest_side", longest_side)):
        if value is not None:
            _check_side(name, value)
    if isinstance(size, OutputSize):
        parsed = size
    elif isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise InvalidArgumentError("size", size, "a (width, height) pair")
        pair = (_whole("size", size[0]), _whole("size", size[1]))
        for value in pair:
            if value is not None:
                _check_side("size", value)
        parsed = OutputSize(width=pair[0], height=pair[1])
    elif _is_empty(size):
        parsed = OutputSize()
    else:
        parsed = parse_size(size)
    # The user's own names in the conflict message ("size", not the width it was parsed into).
    _check_one_request({"scale": scale, "size": None if parsed.is_native() else size, "width": width,
                        "height": height, "longest_side": longest_side})
    if not parsed.is_native():
        return parsed
    return OutputSize(scale=scale, width=width, height=height, longest_side=longest_side)


def target_dimensions(in_width: int, in_height: int, request: OutputSize, model_scale: int = 4) -> tuple[int, int]:
    """The exact output ``(width, height)`` of a request for an ``in_width x in_height`` input.

    A factor gives ``round(side * scale)``; one side or the longest side keeps the input's aspect ratio (the other
    side rounded to the nearest pixel); a width and a height are taken as they are. Halves round up (43 x 1.5 = 64.5
    -> 65), and every side is at least 1.
    """
    _check_input(in_width, in_height)
    if request.scale is not None:
        return _round_half_up(in_width * request.scale), _round_half_up(in_height * request.scale)
    if request.longest_side is not None:
        if in_width >= in_height:
            return request.longest_side, _scaled(in_height, request.longest_side, in_width)
        return _scaled(in_width, request.longest_side, in_height), request.longest_side
    if request.width is not None and request.height is not None:
        return request.width, request.height
    if request.width is not None:
        return request.width, _scaled(in_height, request.width, in_width)
    if request.height is not None:
        return _scaled(in_width, request.height, in_height), request.height
    return in_width * model_scale, in_height * model_scale


@dataclass(frozen=True)
class SizePlan:
    """How an ``in_width x in_height`` input reaches the requested size: ``passes`` model passes, then (when the last
    pass's output is not the target) one anti-aliased resize.

    Attributes:
        in_width, in_height: the input, pixels.
        out_width, out_height: the exact final output, pixels.
        passes: model passes (at least 1).
        pass_sizes: ``(width, height)`` after each pass (each one ``model_scale`` times the one before).
        model_scale: the model's factor per pass.
        request: what was asked (for the record).
    """

    in_width: int
    in_height: int
    out_width: int
    out_height: int
    passes: int
    pass_sizes: tuple[tuple[int, int], ...]
    model_scale: int
    request: OutputSize = field(default_factory=OutputSize)

    @property
    def needs_resize(self) -> bool:
        """Whether the last pass's output must be resized to reach the target."""
        return self.pass_sizes[-1] != (self.out_width, self.out_height)

    def describe(self) -> str:
        """E.g. ``"2 passes: 40x32 -> 160x128 -> 640x512, resized to 320x256"``."""
        sizes = " -> ".join(f"{w}x{h}" for w, h in ((self.in_width, self.in_height), *self.pass_sizes))
        text = f"{self.passes} pass{'es' if self.passes != 1 else ''}: {sizes}"
        return text + (f", resized to {self.out_width}x{self.out_height}" if self.needs_resize else "")

    def metadata(self) -> dict:
        """JSON-safe record of the plan (lists, not tuples, so that it survives a JSON round trip unchanged)."""
        return {
            "request": self.request.as_dict(),
            "request_text": self.request.describe(),
            "model_scale": self.model_scale,
            "passes": self.passes,
            "input_size": [self.in_width, self.in_height],
            "pass_sizes": [list(size) for size in self.pass_sizes],
            "output_size": [self.out_width, self.out_height],
            "resized": self.needs_resize,
        }


def plan_size(in_width: int, in_height: int, request: OutputSize, model_scale: int = 4,
              max_passes: int = 4) -> SizePlan:
    """Plan the model passes and the final resize of one request (module docstring).

    The fewest passes whose output is at least the target on both sides, and at least one (a factor below the
    model's still runs one pass, then downscales). A ``model_scale`` of 1 (restoration models) always plans one pass
    and a resize either way.

    Raises:
        InvalidArgumentError: the target needs more than ``max_passes`` passes (the message gives the largest factor
            allowed), or a pass would output more than 65536 pixels on a side.
    """
    _check_input(in_width, in_height)
    if not isinstance(model_scale, int) or model_scale < 1:
        raise InvalidArgumentError("model_scale", model_scale, "a whole number of at least 1")
    if not isinstance(max_passes, int) or max_passes < 1:
        raise InvalidArgumentError("max_passes", max_passes, "a whole number of at least 1")
    out_width, out_height = target_dimensions(in_width, in_height, request, model_scale)
    argument, value = _request_argument(request, model_scale)
    passes, factor = 1, model_scale
    # Integer arithmetic: the pass output is exact, so "x16" is exactly two passes with no float doubt.
    while model_scale > 1 and (in_width * factor < out_width or in_height * factor < out_height):
        if passes == max_passes:
            largest = model_scale ** max_passes
            raise InvalidArgumentError(
                argument, value,
                f"at most x{largest} of the input ({max_passes} passes of x{model_scale}: at most "
                f"{in_width * largest}x{in_height * largest} for this {in_width}x{in_height} input)",
                f"it would give {out_width}x{out_height}; ask for a smaller output, or upscale the result again")
        passes, factor = passes + 1, factor * model_scale
    pass_sizes = tuple((in_width * model_scale ** n, in_height * model_scale ** n) for n in range(1, passes + 1))
    last_width, last_height = pass_sizes[-1]
    if max(last_width, last_height) > MAX_SIDE:
        raise InvalidArgumentError(
            argument, value,
            f"small enough that no model pass exceeds {MAX_SIDE} pixels on a side (for this {in_width}x{in_height} "
            f"input, {passes} pass{'es' if passes != 1 else ''} of x{model_scale} would make {last_width}x{last_height}"
            + (f", then resized to {out_width}x{out_height})" if (last_width, last_height) != (out_width, out_height)
               else ")"),
            "ask for a smaller output, or upscale a smaller input")
    return SizePlan(in_width, in_height, out_width, out_height, passes, pass_sizes, model_scale, request)


def resize_exact(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize a batch to exactly ``width x height``.

    Args:
        images: (B, C, H, W) float in [0, 1]; any C (RGB, RGBA, grey).
        width, height: the output size, pixels (at least 1).

    Returns:
        (B, C, height, width) float32 in [0, 1]. Downscaling is bicubic with an anti-aliasing filter as wide as the
        reduction (so fine texture averages out instead of aliasing into moire); upscaling (rare: a factor below the
        model's never needs it, only a model_scale 1 run does) is bicubic. Bicubic overshoots at edges, hence the
        clamp. When ``images`` already has that size it is returned as it is (the same tensor when float32).
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputImageError(f"resize_exact takes a (B, C, H, W) float tensor, got {got}")
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(name, value, "a whole number of at least 1")
    images = images.float()  # a no-op (the same tensor) when it is float32 already
    in_height, in_width = images.shape[-2:]
    if (in_height, in_width) == (height, width):
        return images
    # antialias only matters on an axis that shrinks; off when both grow, to stay plain bicubic there.
    antialias = height < in_height or width < in_width
    resized = F.interpolate(images, size=(height, width), mode="bicubic", align_corners=False, antialias=antialias)
    return resized.clamp_(0.0, 1.0)


# --- helpers -------------------------------------------------------------------------------------------------------

def _is_empty(value) -> bool:
    """0, None and "" (or blank text) mean "not given" for every front-end value."""
    if value is None or isinstance(value, bool):
        return value is None
    if isinstance(value, str):
        return value.strip() in ("", "0")
    return isinstance(value, (int, float)) and value == 0


def _number(name: str, value) -> float | None:
    """A front-end number (int, float, numeric text) as a float, or None when not given."""
    if _is_empty(value):
        return None
    if isinstance(value, bool):
        raise InvalidArgumentError(name, value, "a number")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(name, value, "a number") from None
    return None if number == 0 else number  # "0.0" or a numpy zero: not given either


def _whole(name: str, value) -> int | None:
    """A front-end whole number (int, 2048.0, "2048") as an int, or None when not given."""
    number = _number(name, value)
    if number is None:
        return None
    if not math.isfinite(number) or number != int(number):
        raise InvalidArgumentError(name, value, "a whole number of pixels")
    return int(number)


def _check_scale(name: str, scale) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 < scale <= MAX_SCALE):
        raise InvalidArgumentError(name, scale, f"a factor above 0 and at most {MAX_SCALE:g} (0 or empty: the "
                                                f"model's own scale)")


def _check_side(name: str, side) -> None:
    if isinstance(side, bool) or not isinstance(side, int) or not (1 <= side <= MAX_SIDE):
        raise InvalidArgumentError(name, side, f"a whole number of pixels from 1 to {MAX_SIDE} (0 or empty: not "
                                               f"given)")


def _check_one_request(given: dict) -> None:
    """Refuse two kinds of request at once (a scale and a size...): which one wins would be a guess."""
    groups = [group for group in _GROUPS if any(given.get(name) is not None for name in group)]
    if len(groups) < 2:
        return
    first, second = groups[:2]
    name = first[0]

    def spelled(group):
        return " and ".join(f"{{arg:{member}}}" for member in group if given.get(member) is not None)

    raise InvalidArgumentError(
        name, given[name], f"left empty (0) when {spelled(second)} is given",
        f"give one of them: {spelled(first)} or {spelled(second)} (0 or empty: not given)")


def _check_input(in_width, in_height) -> None:
    for value in (in_width, in_height):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputImageError(f"the input size must be whole numbers of at least 1 pixel, got "
                                  f"{in_width!r}x{in_height!r}")


def _round_half_up(value: float) -> int:
    return max(1, math.floor(value + 0.5))


def _scaled(side: int, numerator: int, denominator: int) -> int:
    """``round(side * numerator / denominator)`` in integers (halves up, at least 1): no float error on aspect."""
    return max(1, (2 * side * numerator + denominator) // (2 * denominator))


def _request_argument(request: OutputSize, model_scale: int) -> tuple[str, object]:
    """The argument a refused plan is reported against, and its value, in the request's own terms."""
    if request.scale is not None:
        return "scale", request.scale
    if request.longest_side is not None:
        return "longest_side", request.longest_side
    if request.width is not None and request.height is not None:
        return "size", f"{request.width}x{request.height}"
    if request.width is not None:
        return "width", request.width
    if request.height is not None:
        return "height", request.height
    return "scale", model_scale
