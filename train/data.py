"""Training data: image sources, per-sample seeds, HR crops and LR inputs, the step-indexed sampler, the pair pool.

Sources (``data.sources`` in a recipe, a list; each entry one of):

* ``{folder: DIR}``: every image below DIR (recursively), e.g. any photo collection;
* ``{imagenet: DIR}``: ImageNet's ``train/`` layout (one sub-folder per class; the same as a recursive folder);
* ``{list: FILE}``: a text file with one image path per line (relative paths are relative to the list's folder,
  or to ``root:`` when given); the official FFHQ / ImageNet file lists work as they are;
* ``{skimage: [astronaut, coffee, ...]}``: scikit-image's sample photographs (shipped inside its PyPI package).

Determinism: sample ``i`` of step ``s`` has the global index ``s * global_batch + i``. Which image it shows, its crop,
flip and degradation come from generators seeded by (run seed, global index), and the image order of each epoch from
(run seed, epoch); nothing depends on a process's running RNG or on the number of processes, so a global batch is the
same for 1 or N processes and a resumed run continues exactly (the data position is the step).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import degradations as deg

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".jpe")

# scikit-image sample photographs that are natural photos (RGB or gray) and large enough for 64-256 px crops.
SKIMAGE_PHOTOS = ("astronaut", "camera", "coins", "coffee", "chelsea", "rocket", "motorcycle_left",
                  "motorcycle_right", "hubble_deep_field", "retina", "ihc", "brick", "grass", "gravel", "moon",
                  "clock_motion", "cell")
_SKIMAGE_FILES = {"hubble_deep_field": "hubble_deep_field.jpg", "retina": "retina.jpg", "rocket": "rocket.jpg"}


class DataError(ValueError):
    """A data source that cannot be used; the message says what was expected."""


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (ints, strings): stable across processes, platforms and Python runs."""
    digest = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def numpy_rng(*parts) -> np.random.Generator:
    return np.random.default_rng(derive_seed(*parts))


def torch_generator(*parts, device: str | torch.device = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(*parts))
    return generator


# ---------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class ImageRef:
    """One training image: a file path, or ``skimage:NAME``."""

    location: str

    def load(self):
        """The image as an 8-bit RGB PIL image (gray, palette and alpha images converted)."""
        from PIL import Image

        if self.location.startswith("skimage:"):
            path = skimage_path(self.location.split(":", 1)[1])
        else:
            path = self.location
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, ValueError) as error:
            raise DataError(f"cannot read training image '{path}' ({error}); remove it from the source") from error


def skimage_path(name: str) -> str:
    try:
        import skimage
    except ImportError as error:
        raise DataError("the 'skimage' data source needs scikit-image: pip install scikit-image") from error
    if name not in SKIMAGE_PHOTOS:
        raise DataError(f"'{name}' is not one of scikit-image's sample photos this project uses: "
                        f"{', '.join(SKIMAGE_PHOTOS)}")
    return os.path.join(os.path.dirname(skimage.__file__), "data", _SKIMAGE_FILES.get(name, name + ".png"))


def _images_below(folder: Path) -> list[str]:
    found = [str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(found)


def collect_images(sources: Sequence[dict], what: str = "data.sources") -> list[ImageRef]:
    """All images of a recipe's source list, in a stable order."""
    if not sources:
        raise DataError(f"{what} is empty: give at least one source, e.g. [{{folder: /path/to/images}}]")
    refs: list[ImageRef] = []
    for entry in sources:
        if not isinstance(entry, dict) or len(set(entry) - {"root"}) != 1:
            raise DataError(f"each entry of {what} must have exactly one of folder / imagenet / list / skimage, "
                            f"got {entry!r}")
        if "folder" in entry or "imagenet" in entry:
            folder = Path(entry.get("folder") or entry.get("imagenet")).expanduser()
            if not folder.is_dir():
                raise DataError(f"image folder '{folder}' in {what} does not exist")
            found = _images_below(folder)
            if not found:
                raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) below '{folder}' in {what}")
            refs += [ImageRef(p) for p in found]
        elif "list" in entry:
            list_file = Path(entry["list"]).expanduser()
            if not list_file.is_file():
                raise DataError(f"file list '{list_file}' in {what} does not exist")
            root = Path(entry.get("root") or list_file.parent).expanduser()
            lines = [line.strip() for line in list_file.read_text(encoding="utf-8").splitlines()]
            paths = [line if os.path.isabs(line) else str(root / line) for line in lines if line and
                     not line.startswith("#")]
            if not paths:
                raise DataError(f"file list '{list_file}' names no images")
            refs += [ImageRef(p) for p in paths]
        elif "skimage" in entry:
            names = entry["skimage"]
            names = [names] if isinstance(names, str) else list(names)
            for name in names:
                skimage_path(name)  # validates the name
            refs += [ImageRef(f"skimage:{n}") for n in names]
        else:
            raise DataError(f"unknown source kind in {what}: {entry!r}; use folder, imagenet, list or skimage")
    return refs


# ---------------------------------------------------------------------------------------------- samples


def pil_to_float(image) -> torch.Tensor:
    """8-bit RGB PIL image -> (3, H, W) float32 in [0, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def dihedral(tensor: torch.Tensor, code: int) -> torch.Tensor:
    """One of the 8 flips / 90-degree rotations of (..., H, W) (code 0 = identity)."""
    if code & 1:
        tensor = tensor.flip(-1)
    if code & 2:
        tensor = tensor.flip(-2)
    if code & 4:
        tensor = tensor.transpose(-1, -2)
    return tensor


def reflect_pad_to(image: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect-pad (C, H, W) bottom/right to at least size x size (repeatedly for tiny images)."""
    while image.shape[-2] < size or image.shape[-1] < size:
        pad_h = min(max(0, size - image.shape[-2]), image.shape[-2] - 1)
        pad_w = min(max(0, size - image.shape[-1]), image.shape[-1] - 1)
        image = F.pad(image[None], (0, pad_w, 0, pad_h), mode="reflect")[0]
    return image


class TrainPairs(torch.utils.data.Dataset):
    """Map-style dataset indexed by the *global sample index* (any non-negative integer).

    Returns a dict with ``gt`` (3, S, S) float32 in [0, 1] and, for the CPU degradations (``pil_bicubic``,
    ``bicubic``), ``lq`` (3, S/scale, S/scale) float32 in [0, 1]; for ``realesrgan`` the three per-sample kernels
    instead (the degradation itself runs batched on the training device, see :func:`degrade_batch`). ``index``
    carries the global index.
    """

    def __init__(self, refs: Sequence[ImageRef], config: dict):
        self.refs = list(refs)
        self.seed = int(config["seed"])
        data = config["data"]
        self.kind = data["degradation"]
        self.gt_size = int(data["gt_size"])
        self.scale = int(config["scale"])
        self.flip = bool(data["flip"])
        self.dihedral = bool(data["dihedral"])
        self.channel_shuffle = bool(data.get("channel_shuffle", False))
        self.rescale_gt = bool(data["rescale_gt"])
        self.smallest_side = data["smallest_side"]
        self.realesrgan = deg.RealESRGANSettings.from_dict(data.get("realesrgan") or {})
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:  # the sampler decides which indices exist; this is the image count
        return len(self.refs)

    def image_for(self, index: int) -> int:
        """Which image global sample ``index`` shows: a seeded permutation per epoch over the images."""
        count = len(self.refs)
        epoch, position = divmod(index, count)
        order = np.random.default_rng(derive_seed(self.seed, "epoch", epoch)).permutation(count)
        return int(order[position])

    def _whole_pair(self, image_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """pil_bicubic: the whole image cropped to a multiple of the scale and its PIL-bicubic LR (cached)."""
        if image_index not in self._cache:
            image = self.refs[image_index].load()
            width, height = image.size
            image = image.crop((0, 0, width - width % self.scale, height - height % self.scale))
            minimum = self.gt_size
            if image.size[0] < minimum or image.size[1] < minimum:
                raise DataError(f"{self.refs[image_index].location} is {image.size[0]}x{image.size[1]} px, smaller "
                                f"than the {minimum} px crop of the pil_bicubic degradation")
            lr = deg.pil_bicubic_downscale(image, self.scale)
            self._cache[image_index] = (pil_to_float(image), pil_to_float(lr))
        return self._cache[image_index]

    def _augmented(self, gt: torch.Tensor, lq: torch.Tensor, rng: np.random.Generator, index: int) -> dict:
        """The bicubic kinds' pair after a seeded flip / rotation and, with ``channel_shuffle``, an RGB permutation
        (the same on both: each channel is downscaled on its own, so the pair stays exact)."""
        code = int(rng.integers(0, 8)) if self.dihedral else (int(rng.integers(0, 2)) if self.flip else 0)
        gt, lq = dihedral(gt, code), dihedral(lq, code)
        if self.channel_shuffle:
            order = torch.from_numpy(rng.permutation(3))
            gt, lq = gt[order], lq[order]
        return {"gt": gt.contiguous(), "lq": lq.contiguous(), "index": index}

    def __getitem__(self, index: int) -> dict:
        rng = numpy_rng(self.seed, "sample", int(index))
        image_index = self.image_for(int(index))
        size, scale = self.gt_size, self.scale
        if self.kind == "pil_bicubic":
            hr, lr = self._whole_pair(image_index)
            lr_size = size // scale
            top = int(rng.integers(0, lr.shape[-2] - lr_size + 1))
            left = int(rng.integers(0, lr.shape[-1] - lr_size + 1))
            gt = hr[:, top * scale:(top + lr_size) * scale, left * scale:(left + lr_size) * scale]
            lq = lr[:, top:top + lr_size, left:left + lr_size]
            return self._augmented(gt, lq, rng, index)

        image = self.refs[image_index].load()
        if self.kind == "bicubic":
            gt = self._bicubic_crop(image, rng)
            lq = deg.matlab_imresize(gt, 1 / scale).clamp(0, 1).float()
            return self._augmented(gt, lq, rng, index)

        # realesrgan: flip, crop (rescaled to gt_size), kernels; the rest happens batched on the device
        gt = pil_to_float(image)
        if self.flip and rng.uniform() < 0.5:
            gt = gt.flip(-1)
        if self.rescale_gt:
            side = max(min(gt.shape[-2:]), size)
            gt = reflect_pad_to(gt, side)
            top = int(rng.integers(0, gt.shape[-2] - side + 1))
            left = int(rng.integers(0, gt.shape[-1] - side + 1))
            gt = gt[:, top:top + side, left:left + side]
            if side != size:
                gt = F.interpolate(gt[None], size=(size, size), mode="area")[0]
        else:
            gt = reflect_pad_to(gt, size)
            top = int(rng.integers(0, gt.shape[-2] - size + 1))
            left = int(rng.integers(0, gt.shape[-1] - size + 1))
            gt = gt[:, top:top + size, left:left + size]
        kernels = deg.sample_kernels(rng, self.realesrgan)
        return {"gt": gt.contiguous(), **kernels, "index": index}

    def _bicubic_crop(self, image, rng: np.random.Generator) -> torch.Tensor:
        """bicubic recipe: shortest side to ``smallest_side`` (PIL bicubic), then a random gt_size crop."""
        from PIL import Image

        size = self.gt_size
        if self.smallest_side:
            width, height = image.size
            factor = float(self.smallest_side) / min(width, height)
            image = image.resize((max(size, round(width * factor)), max(size, round(height * factor))),
                                 Image.BICUBIC)
        gt = reflect_pad_to(pil_to_float(image), size)
        top = int(rng.integers(0, gt.shape[-2] - size + 1))
        left = int(rng.integers(0, gt.shape[-1] - size + 1))
        return gt[:, top:top + size, left:left + size]


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields, for every step from ``start_step`` to ``end_step`` - 1, this process's global sample indices.

    Process ``rank`` of ``world_size`` takes the contiguous slice rank*n .. (rank+1)*n - 1 of each global batch, so
    its micro-batches are the same groups of global indices whatever the number of processes.
    """

    def __init__(self, start_step: int, end_step: int, global_batch: int, rank: int, world_size: int):
        self.start_step, self.end_step = int(start_step), int(end_step)
        self.global_batch, self.rank, self.world_size = int(global_batch), int(rank), int(world_size)
        self.per_rank = self.global_batch // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.end_step):
            first = step * self.global_batch + self.rank * self.per_rank
            yield list(range(first, first + self.per_rank))

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)


def make_loader(dataset: TrainPairs, sampler: StepBatchSampler, workers: int, pin_memory: bool):
    """A DataLoader over whole steps (one batch = this process's share of one global batch)."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                       pin_memory=pin_memory and torch.cuda.is_available(),
                                       persistent_workers=False, prefetch_factor=2 if workers else None)


def degrade_batch(batch: dict, config: dict, micro_batch: int, device: torch.device) -> dict:
    """Move a loaded batch to the device and, for realesrgan, synthesise its LR images there.

    Group-level random choices (resize factors / modes, noise kind, second order, final order) are drawn per group
    of ``micro_batch`` consecutive global indices, seeded by the group's first index, so they do not depend on how
    the global batch is split over processes. Returns ``gt`` and ``lq`` in [0, 1] on the device.
    """
    gt = batch["gt"].to(device, non_blocking=True)
    if "lq" in batch:
        return {"gt": gt, "lq": batch["lq"].to(device, non_blocking=True), "index": batch["index"]}
    seed = int(config["seed"])
    settings = deg.RealESRGANSettings.from_dict(config["data"].get("realesrgan") or {})
    indices = [int(i) for i in batch["index"]]
    outputs = []
    for first in range(0, len(indices), micro_batch):
        group = indices[first:first + micro_batch]
        sample_rngs = [numpy_rng(seed, "degrade", i) for i in group]
        group_rng = numpy_rng(seed, "degrade-group", group[0])
        generator = torch_generator(seed, "noise", group[0], device=device)
        kernels = {k: batch[k][first:first + micro_batch] for k in ("kernel1", "kernel2", "sinc_kernel")}
        outputs.append(deg.realesrgan_degrade(gt[first:first + micro_batch], kernels, int(config["scale"]),
                                              settings, sample_rngs, group_rng, generator))
    return {"gt": gt, "lq": torch.cat(outputs), "index": batch["index"]}


class PairPool:
    """The RealESRGAN training-pair pool, one small pool per batch position ("lane").

    The official pool (size 10x the per-GPU batch) returns fresh batches until it is full, then swaps: each step
    returns pooled pairs and stores the fresh ones. Here each lane (a position in the global batch) has ``size``
    slots: during the first ``size`` steps the fresh pair is stored in slot ``step`` and returned; afterwards a
    seeded random slot is returned and refilled with the fresh pair. A lane lives on the process that owns that
    batch position, so the result does not depend on the number of processes, and the pool at any step is a
    function of the step alone: :meth:`rebuild` recreates it on resume from the slot choices and the seeded samples.
    """

    def __init__(self, size: int, seed: int, positions: Sequence[int]):
        self.size, self.seed = int(size), int(seed)
        self.positions = list(positions)  # global batch positions of this process's lanes
        self.slots: dict[int, list[tuple[torch.Tensor, torch.Tensor] | None]] = {
            p: [None] * self.size for p in self.positions}

    def slot_for(self, step: int, position: int) -> int:
        if step < self.size:
            return step
        return int(numpy_rng(self.seed, "pool", step, position).integers(0, self.size))

    def exchange(self, step: int, gt: torch.Tensor, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's fresh pairs ((n, 3, H, W) each, lanes in order) and return the pairs to train on."""
        if self.size <= 0:
            return gt, lq
        out_gt, out_lq = gt.clone(), lq.clone()
        for row, position in enumerate(self.positions):
            slot = self.slot_for(step, position)
            stored = self.slots[position][slot]
            if step >= self.size and stored is not None:
                out_gt[row], out_lq[row] = stored[0].to(gt.device), stored[1].to(lq.device)
            self.slots[position][slot] = (gt[row].detach().clone(), lq[row].detach().clone())
        return out_gt, out_lq

    def writers(self, step: int) -> dict[int, dict[int, int]]:
        """For the pool as it is *before* ``step``: lane -> {slot: the step whose fresh pair fills it}.

        Walks back from ``step - 1`` until every slot of every lane has its last writer (a few dozen steps).
        """
        owners: dict[int, dict[int, int]] = {p: {} for p in self.positions}
        if self.size <= 0:
            return owners
        for position in self.positions:
            found = owners[position]
            past = step - 1
            while past >= 0 and len(found) < min(self.size, step):
                slot = self.slot_for(past, position)
                found.setdefault(slot, past)
                past -= 1
        return owners

    def rebuild(self, step: int, fresh_pair) -> None:
        """Refill the slots as they were before ``step``; ``fresh_pair(step, position) -> (gt, lq)``."""
        for position, owners in self.writers(step).items():
            for slot, past in owners.items():
                self.slots[position][slot] = fresh_pair(past, position)

