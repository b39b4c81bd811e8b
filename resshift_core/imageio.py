"""Image files in and out, in one place: what the command line, the demo app, the WebUI extension and the Python
API read and write.

* Reading (:func:`read_image`, :meth:`DecodedImage.from_pil`): PNG, JPEG, WebP, TIFF, BMP; the EXIF orientation is
  applied; grayscale stays grayscale; palette images become RGB(A); an alpha channel is kept apart; 16-bit samples
  keep 16 bits (grayscale, RGB and RGBA PNG, uncompressed RGB TIFF, decoded past Pillow's 8-bit colour modes); the
  colour profile is kept.
* The 16-bit rule: Pillow's integer modes (``I;16*`` and ``I``) hold 16-bit samples and are divided by 65535,
  whatever their values; every 8-bit mode is divided by 255.
* Writing (:func:`encode_image`, :func:`write_image`): the result in the kind of its source (grayscale, 16 bits
  where the format can, the colour profile, alpha re-attached); PNG text metadata; files appear atomically (a
  temporary file in the same folder, renamed) with the permissions of a plain new file.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputImageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".tif", ".tiff", ".bmp", ".dib"}
# output format name -> (Pillow format name, file extension)
OUTPUT_FORMATS = {"png": ("PNG", ".png"), "jpg": ("JPEG", ".jpg"), "webp": ("WEBP", ".webp"),
                  "tiff": ("TIFF", ".tiff")}
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as Pillow's convert("L")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

@dataclass
class DecodedImage:
    """An input image as the pipeline needs it, plus what is needed to write the result in the same kind.

    Attributes:
        rgb: (H, W, 3) float32 in [0, 1] (grayscale repeated on the three channels).
        alpha: (H, W) float32 in [0, 1], or None.
        grayscale: the source had one colour channel; the result is written as grayscale.
        sixteen_bit: the source had 16 bits per sample; the result is written with 16 where the format allows.
        icc_profile: the source's colour profile, kept when the output has the same kind of colour.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    grayscale: bool
    sixteen_bit: bool
    icc_profile: bytes | None = None

    @property
    def height(self) -> int:
        return self.rgb.shape[0]

    @property
    def width(self) -> int:
        return self.rgb.shape[1]

    @classmethod
    def from_pil(cls, image) -> DecodedImage:
        """A PIL image (already opened; EXIF orientation applied here) -> DecodedImage by the rules of this
        module (16-bit grayscale kept; 16-bit colour needs the file: use :func:`read_image`)."""
        from PIL import ImageOps

        try:
            image.load()
            oriented = ImageOps.exif_transpose(image)
        except (OSError, ValueError, SyntaxError) as error:
            raise InputImageError(f"the image could not be decoded ({error}); is the file complete?") from None
        return _decode_pillow(oriented if oriented is not None else image)


def _wide_rawmodes(image) -> tuple[list, bool] | None:
    """Tiles that decode the low bytes of a 16-bit multi-channel image (and whether it is gray + alpha), or None
    when there is no such trick for this file.

    Pillow has no 16-bit colour mode: it decodes 48/64-bit PNG and TIFF by keeping the high byte of each sample.
    Decoding the same data again while telling the unpacker the opposite byte order keeps the low bytes instead
    (the bytes per pixel, which PNG un-filtering depends on, stay the same). Gray + alpha 16-bit PNG is decoded as
    its raw bytes through the 4-byte RGBA unpacker.
    """
    swaps = {"RGB;16B": "RGB;16L", "RGB;16L": "RGB;16B", "RGBA;16B": "RGBA;16L", "RGBA;16L": "RGBA;16B",
             "LA;16B": "RGBA"}
    tiles, rawmodes = [], set()
    for tile in image.tile or []:
        # Pillow 10+ gives named tiles (codec_name, extents, offset, args); older ones (9.5 in the WebUI) tuples
        codec, extents, offset, args = tile[0], tile[1], tile[2], tile[3]
        rawmode = args if isinstance(args, str) else (args or ("",))[0]
        if image.mode in ("RGB", "RGBA") and ";16" in str(rawmode) and (
                rawmode not in swaps or codec not in ("zip", "raw")):
            # e.g. compressed TIFF, decoded by libtiff, whose arguments cannot be changed this way
            logger.warning("%s has 16 bits per sample, but only 8 can be read from this kind of file",
                           getattr(image, "filename", "the image"))
            return None
        if rawmode not in swaps or codec not in ("zip", "raw"):
            return None
        rawmodes.add(rawmode)
        new_args = swaps[rawmode] if isinstance(args, str) else (swaps[rawmode],) + tuple(args[1:])
        tiles.append(tile._replace(args=new_args) if hasattr(tile, "_replace") else (codec, extents, offset,
                                                                                     new_args))
    if not tiles or len(rawmodes) != 1:
        return None
    return tiles, rawmodes == {"LA;16B"}


def _decode_wide(path: Path, image, tiles: list, gray_alpha: bool) -> DecodedImage | None:
    """Full-precision decode of a 16-bit colour (or gray + alpha) image whose 8-bit decode ``image`` is loaded;
    None if this Pillow cannot do it."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as low_source:
            low_source.tile = tiles
            low_source.load()
            low = np.asarray(ImageOps.exif_transpose(low_source)).astype(np.uint16)
    except (OSError, ValueError, SyntaxError) as error:
        logger.info("16-bit decode of %s not available (%s)", path, error)
        return None
    if gray_alpha:  # ``low`` holds the raw big-endian bytes: gray high, gray low, alpha high, alpha low
        gray = (low[..., 0] << 8 | low[..., 1]).astype(np.float32) / 65535.0
        alpha = (low[..., 2] << 8 | low[..., 3]).astype(np.float32) / 65535.0
        return DecodedImage(np.repeat(gray[..., None], 3, axis=2), alpha, True, True)
    high = np.asarray(ImageOps.exif_transpose(image)).astype(np.uint16)
    if low.shape != high.shape:
        return None
    samples = (high << 8 | low).astype(np.float32) / 65535.0
    alpha = samples[..., 3] if samples.shape[-1] == 4 else None
    return DecodedImage(np.ascontiguousarray(samples[..., :3]), alpha, False, True, image.info.get("icc_profile"))


def read_image(path: str | os.PathLike) -> DecodedImage:
    """Read an image file for upscaling (EXIF orientation applied).

    Raises:
        InputImageError: not an image, or a damaged / truncated one (the message says which).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            wide = _wide_rawmodes(image)
            image.load()
            if wide is not None:
                decoded = _decode_wide(path, image, *wide)
                if decoded is not None:
                    return decoded
                logger.warning("%s has 16 bits per sample but this Pillow cannot decode them; using 8 bits", path)
            return _decode_pillow(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        raise InputImageError("not an image file this program can read") from None
    except Image.DecompressionBombError as error:
        raise InputImageError(f"refused as too large ({error})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        raise InputImageError(f"damaged or truncated ({error or type(error).__name__})") from None


def _decode_pillow(image) -> DecodedImage:
    """A loaded, oriented Pillow image -> DecodedImage."""
    mode = image.mode
    icc = image.info.get("icc_profile")
    if mode in SIXTEEN_BIT_MODES:
        gray = np.clip(np.asarray(image).astype(np.float32), 0, 65535) / 65535.0
        return DecodedImage(np.repeat(gray[..., None], 3, axis=2), None, True, True)
    if mode in ("P", "PA"):
        image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
    elif mode in ("L", "RGB") and "transparency" in image.info:
        image = image.convert("LA" if mode == "L" else "RGBA")  # a colour-key transparency becomes alpha
    elif mode in ("1", "F"):
        image = image.convert("L")
    elif mode == "La":
        image = image.convert("LA")
    elif mode == "RGBa":
        image = image.convert("RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        icc = None  # a CMYK / Lab profile does not describe the RGB result
        image = image.convert("RGB")
    samples = np.asarray(image).astype(np.float32) / 255.0
    if image.mode in ("L", "LA"):
        gray = samples if image.mode == "L" else samples[..., 0]
        alpha = samples[..., 1] if image.mode == "LA" else None
        return DecodedImage(np.repeat(gray[..., None], 3, axis=2), alpha, True, False, icc)
    alpha = samples[..., 3] if image.mode == "RGBA" else None
    return DecodedImage(np.ascontiguousarray(samples[..., :3]), alpha, False, False, icc)


def mask_plane(mask: DecodedImage, image: DecodedImage, where: str = "the mask") -> np.ndarray:
    """An inpainting mask read like any image -> (H, W) float32 in [0, 1] (its luma; white = fill), checked to match
    the image's size: the one mask rule of the command line and the app.

    Raises:
        InputImageError: the mask's size is not the image's.
    """
    if (mask.height, mask.width) != (image.height, image.width):
        raise InputImageError(f"{where} is {mask.width}x{mask.height} but the image is {image.width}x{image.height}; "
                              f"give a mask of the image's size (white = region to fill)")
    return mask.rgb @ LUMA_WEIGHTS


def upscale_alpha(alpha, width: int, height: int):
    """Plain bicubic resize of alpha (float in [0, 1]) to (height, width), clamped: the project's one alpha rule.

    Args:
        alpha: (H, W) numpy array, or a torch tensor (H, W) or (B, H, W) (ComfyUI's MASK); the result has the same
            type (a tensor on the input's device).
    """
    from PIL import Image

    if not isinstance(alpha, np.ndarray):  # a torch tensor, one plane at a time through the same rule
        import torch

        planes = alpha.reshape(-1, *alpha.shape[-2:]).detach().float().cpu().numpy()
        resized = np.stack([upscale_alpha(plane, width, height) for plane in planes])
        return torch.from_numpy(resized).reshape(*alpha.shape[:-2], height, width).to(alpha.device)
    resized = Image.fromarray(alpha.astype(np.float32)).resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(resized), 0.0, 1.0)


def encode_png16(samples: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """(H, W, C) uint16 with C = 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) -> 16-bit PNG file bytes (with
    ``text`` as tEXt chunks, Latin-1).

    Pillow cannot write 16-bit colour PNG, so this writes it directly: one IDAT chunk, every row with the 'Sub'
    filter (each byte minus the byte one pixel to its left, modulo 256), which is cheap and compresses well.
    """
    height, width, channels = samples.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = np.ascontiguousarray(samples.astype(">u2")).view(np.uint8).reshape(height, width * channels * 2)
    bytes_per_pixel = 2 * channels
    filtered = rows.copy()
    filtered[:, bytes_per_pixel:] = rows[:, bytes_per_pixel:] - rows[:, :-bytes_per_pixel]  # uint8 wraps mod 256
    payload = np.concatenate([np.ones((height, 1), np.uint8), filtered], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    texts = b"".join(chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1", "replace"))
                     for key, value in (text or {}).items())
    return (_PNG_SIGNATURE + chunk(b"IHDR", header) + texts + chunk(b"IDAT", zlib.compress(payload, 6))
            + chunk(b"IEND", b""))


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def reset_warnings() -> None:
    """Warn again about format limits (the command line calls it once per command)."""
    _warned.clear()


def result_samples(rgb: np.ndarray, alpha: np.ndarray | None, source: DecodedImage) -> np.ndarray:
    """(H, W, C) float samples in [0, 1] of a result in the kind of its source: C = 1 (gray), 2 (gray + alpha),
    3 (RGB) or 4 (RGBA).

    Args:
        rgb: (H, W, 3) float in [0, 1], the network's result.
        alpha: (H, W) float in [0, 1] (already upscaled) or None.
    """
    planes = [rgb @ LUMA_WEIGHTS] if source.grayscale else [rgb[..., 0], rgb[..., 1], rgb[..., 2]]
    if alpha is not None:
        planes.append(alpha)
    return np.clip(np.stack(planes, axis=-1), 0.0, 1.0)


def to_pil(rgb: np.ndarray, alpha: np.ndarray | None, source: DecodedImage):
    """A result as an 8-bit PIL image of the source's kind: L, LA, RGB or RGBA (the colour profile kept)."""
    from PIL import Image

    narrow = np.round(result_samples(rgb, alpha, source) * 255.0).astype(np.uint8)
    image = Image.fromarray(narrow[..., 0] if narrow.shape[-1] == 1 else narrow)
    if source.icc_profile:
        image.info["icc_profile"] = source.icc_profile
    return image


def encode_image(rgb: np.ndarray, alpha: np.ndarray | None, source: DecodedImage, output_format: str = "png",
                 quality: int = 95, text: dict[str, str] | None = None) -> bytes:
    """The upscaled image as file bytes in ``output_format`` (a key of OUTPUT_FORMATS), in the kind of the source.

    Args:
        rgb: (H, W, 3) float in [0, 1], the network's result.
        alpha: (H, W) float in [0, 1] (already upscaled) or None (JPEG drops it, with a warning).
        source: the decoded input (grayscale / 16-bit / profile).
        quality: JPEG / WebP quality 1-100.
        text: PNG text chunks (how the image was made); other formats do not carry them.
    """
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    pil_format, _ = OUTPUT_FORMATS[output_format]
    if alpha is not None and output_format == "jpg":
        _warn_once("JPEG has no alpha channel: the transparency of the input is dropped (use --format png)")
        alpha = None
    samples = result_samples(rgb, alpha, source)
    buffer = io.BytesIO()
    png_text = None
    if text and output_format == "png":
        png_text = PngInfo()
        for key, value in text.items():
            png_text.add_text(key, value)
    if source.sixteen_bit and output_format in ("png", "tiff"):
        wide = np.round(samples * 65535.0).astype(np.uint16)
        if wide.shape[-1] == 1:  # Pillow writes mode I;16 natively
            Image.fromarray(wide[..., 0]).save(buffer, format=pil_format,
                                               **({"pnginfo": png_text} if png_text else {}))
            return buffer.getvalue()
        if output_format == "png":
            return encode_png16(wide, text)
        _warn_once("16-bit colour TIFF cannot be written with Pillow: writing 8 bits per sample "
                   "(use PNG output to keep 16 bits)")
    elif source.sixteen_bit:
        _warn_once(f"{pil_format} holds 8 bits per sample: 16-bit inputs are written with 8 bits")
    narrow = np.round(samples * 255.0).astype(np.uint8)
    image = Image.fromarray(narrow[..., 0] if narrow.shape[-1] == 1 else narrow)  # L, LA, RGB or RGBA
    options: dict = {}
    if output_format in ("jpg", "webp"):
        options["quality"] = quality
    if output_format == "jpg" and quality >= 90:
        options["subsampling"] = 0  # full-resolution colour: halving it would blur what was just upscaled
    # Keep the colour profile when the output has the same kind of colour as the source (WebP stores gray as RGB).
    if source.icc_profile and not (source.grayscale and output_format == "webp"):
        options["icc_profile"] = source.icc_profile
    if png_text is not None:
        options["pnginfo"] = png_text
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def temporary_beside(path: Path) -> str:
    """A new hidden temporary file in ``path``'s folder (same file system, so the final rename is atomic), with the
    permissions a plain new file would get (mkstemp makes it private)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    return temporary


def write_image(path: str | os.PathLike, data: bytes) -> None:
    """Write encoded image bytes atomically (see :func:`write_atomically`)."""
    write_atomically(Path(path), data)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so that ``path`` is
    either absent, the old file or the complete new file, even after Ctrl-C."""
    temporary = temporary_beside(path)
    try:
        with open(temporary, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:  # also KeyboardInterrupt: never leave the temporary file behind
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


