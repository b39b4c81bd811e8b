"""The ResShift nodes: a loader, one-node upscaling, the encode / sample / decode split, and inpainting.

Each node is one :class:`~.definitions.NodeDefinition` (inputs with tooltips, outputs, description) and one run
function. A run function takes ComfyUI's values, calls the core once inside :func:`.host.node_errors`, reports
progress through :class:`.host.NodeProgress` and converts the result back; nothing ResShift-specific is decided here.

Node ids and socket types carry the ``ResShiftPipeline`` / ``RESSHIFT_PIPELINE`` names so that they cannot clash
with the other ResShift pack (``ResShiftLoader``, ``ResShiftUpscale``, ``RESSHIFT_MODEL``).
"""

from __future__ import annotations

from . import host
from .core_access import ResShiftNodeError, core, require_core
from .definitions import COMBO, FLOAT, IMAGE, INT, MASK, InputDefinition, NodeDefinition, OutputDefinition

PIPELINE = "RESSHIFT_PIPELINE"
LATENT = "RESSHIFT_LATENT"
AUTO = "auto"
MAX_TILE = 4096
# What the widgets offer comes from the core's rules (and stand-ins with the same values when it cannot import, so
# that the nodes still list and say what to install when they run).
DTYPES = (AUTO, *(core.DTYPE_CHOICES if core is not None else ("fp32", "fp16", "bf16")))
MAX_SEED = core.MAX_SEED if core is not None else 2 ** 64 - 1
TILE_STEP = core.official_tile_range()[1] if core is not None else 64
COLOR_FIXES = core.COLOR_FIX_METHODS if core is not None else ("none", "wavelet", "adain")

LICENSE_NOTE = ("Official weights are published by the ResShift authors under the S-Lab License 1.0 "
                "(non-commercial use only); downloading them means accepting it.")
if core is not None:
    LICENSE_NOTE = (f"Official weights are published by the ResShift authors under the {core.WEIGHTS_LICENSE} "
                    f"({core.LICENSE_URL}); downloading them means accepting it.")


# ---------------------------------------------------------------------------------------------- option lists
def release_options() -> list[str]:
    return [AUTO] + (list(core.RELEASES) if core is not None else [])


def _file_lists(kind: str) -> tuple[list[str], list[str]]:
    """(files present, official names to download) of one kind; empty when the core cannot be imported."""
    if core is None:
        return [], []
    table = core.RELEASES if kind == "unet" else core.AUTOENCODERS
    return host.model_file_options([item.file_name for item in table.values()], kind)


def unet_file_options() -> list[str]:
    """UNet files in the resshift model folders, then the official UNet names not there yet."""
    present, missing = _file_lists("unet")
    return present + missing


def autoencoder_file_options() -> list[str]:
    present, missing = _file_lists("autoencoder")
    return present + missing


def _downloads_note(kind: str) -> str:
    """Which entries of a file list are downloaded when the node runs (said in the input's tooltip)."""
    missing = _file_lists(kind)[1]
    return (f" Downloaded into models/resshift when the node runs (not there yet): {', '.join(missing)}."
            if missing else " Every entry is a file in the resshift model folders.")


# --------------------------------------------------------------------------------------------- shared inputs
PIPELINE_INPUT = InputDefinition("pipeline", PIPELINE, "The ResShift networks from the Load ResShift Pipeline node.")
IMAGE_INPUT = InputDefinition("image", IMAGE, "The image batch to process (B, H, W, 3) in [0, 1].")
SEED_INPUT = InputDefinition(
    "seed", INT, "Seed of the diffusion noise: the same seed, image and settings give the same result on any "
    "device.", default=0, minimum=0, maximum=MAX_SEED, seed_widget=True)
TILE_SIZE_INPUT = InputDefinition(
    "tile_size", INT, f"Largest tile, in latent pixels (= input pixels for the x4 models; a multiple of {TILE_STEP} "
    f"for the official models). Larger images are processed in overlapping tiles blended into one latent with one "
    f"noise field, so no seams show. 0 = the model's preferred size for this device. On out-of-memory the run "
    f"retries with smaller tiles.", default=0, minimum=0, maximum=MAX_TILE, step=TILE_STEP)
TILE_OVERLAP_INPUT = InputDefinition(
    "tile_overlap", INT, "Least overlap between neighbouring tiles, in latent pixels; -1 = the model's default.",
    default=-1, minimum=-1, maximum=MAX_TILE // 2, step=1)

COLOR_FIX_INPUT = InputDefinition(
    "color_fix", COMBO, "Bring the output's colours back to the input's: 'wavelet' keeps the fine detail and takes "
    "the input's low frequencies, 'adain' matches each channel's mean and spread; 'none' is the official "
    "computation. Applied once to the whole output, so tiles do not matter.", options=lambda: list(COLOR_FIXES),
    default="none", optional=True)
SCALE_INPUT = InputDefinition(
    "scale", FLOAT, "Output size as a factor of the input (e.g. 2, 3, 8, 16). The fewest x4 passes reach it (a "
    "second pass runs tiled on the first one's output), then one anti-aliased resize gives the exact size. 0 = the "
    "model's own factor; ignored when a target width or height is set.", default=0.0, minimum=0.0, maximum=64.0,
    step=0.5, optional=True)
TARGET_WIDTH_INPUT = InputDefinition(
    "target_width", INT, "Output width in pixels (0 = not set). With only one of width and height set, the aspect "
    "ratio is kept.", default=0, minimum=0, maximum=65536, step=8, optional=True)
TARGET_HEIGHT_INPUT = InputDefinition(
    "target_height", INT, "Output height in pixels (0 = not set).", default=0, minimum=0, maximum=65536, step=8,
    optional=True)

#: The core's canonical argument names -> this pack's input names (for the advice in error messages).
RUN_INPUTS = {"tile_size": "tile_size", "tile_overlap": "tile_overlap", "seed": "seed", "images": "image",
              "mask": "mask", "latent": "latent", "color_fix": "color_fix", "scale": "scale", "size": "scale",
              "width": "target_width", "height": "target_height"}


def _tiles(run, tile_size: int, tile_overlap: int):
    """The core's tiling from the widgets: 0 (size) and -1 (overlap) leave the choice to the core."""
    return run.tiles(tile_size=tile_size, tile_overlap=None if tile_overlap < 0 else tile_overlap)


def _output_size(scale: float, target_width: int, target_height: int):
    """The core's output size from the widgets (0 = not set; a target size wins over the scale)."""
    if target_width or target_height:
        return core.output_size(width=target_width, height=target_height)
    return core.output_size(scale=scale)


# ----------------------------------------------------------------------------------------------------- loader
LOADER_INPUTS = {"unet": "unet_name", "autoencoder": "vae_name", "release": "release", "dtype": "dtype"}


def load_pipeline(unet_name: str, vae_name: str, release: str, dtype: str) -> tuple:
    require_core()
    with host.node_errors(LOADER_INPUTS):
        return (host.load_networks(unet_name, vae_name, None if release == AUTO else release, dtype),)


LOADER = NodeDefinition(
    node_id="ResShiftPipelineLoader",
    display_name="Load ResShift Pipeline",
    description=("Loads a ResShift diffusion UNet and its VQ autoencoder from models/resshift (folders listed under "
                 "'resshift:' in extra_model_paths.yaml work too). Official files that are not there yet are "
                 "downloaded into models/resshift on first use. A pixel-space UNet (e.g. one trained with the "
                 "pack's train/ recipes) needs no autoencoder: vae_name is then not used. " + LICENSE_NOTE),
    inputs=(
        InputDefinition("unet_name", COMBO, lambda: "The diffusion network (UNet) file, e.g. "
                        "resshift_realsrx4_s4_v3.pth (files named as an official autoencoder are not listed here)."
                        + _downloads_note("unet") + " " + LICENSE_NOTE,
                        options=unet_file_options, default="resshift_realsrx4_s4_v3.pth"),
        InputDefinition("vae_name", COMBO, lambda: "The VQ autoencoder file the UNet was trained with "
                        "(autoencoder_vq_f4.pth for the super-resolution and ImageNet inpainting releases); not used "
                        "by pixel-space UNets." + _downloads_note("autoencoder"),
                        options=autoencoder_file_options, default="autoencoder_vq_f4.pth"),
        InputDefinition("release", COMBO, "Which release the UNet is: 'auto' reads it from the file (official name "
                        "or metadata). The noise schedule cannot be read from the weights, so renamed files need it.",
                        options=release_options, default=AUTO),
        InputDefinition("dtype", COMBO, "Precision of the networks: 'auto' follows ComfyUI's choice for the device "
                        "(float32 on the CPU); bf16 is offered where the device runs it.",
                        options=lambda: [AUTO, *host.dtype_options()] if core is not None else list(DTYPES),
                        default=AUTO),
    ),
    outputs=(OutputDefinition(PIPELINE, "pipeline", "Both networks, managed by ComfyUI's model management."),),
    run=load_pipeline,
)


# ---------------------------------------------------------------------------------------------------- upscale
def upscale(pipeline, image, seed: int, tile_size: int, tile_overlap: int, mask=None, color_fix: str = "none",
            scale: float = 0.0, target_width: int = 0, target_height: int = 0) -> tuple:
    run = _checked(pipeline)
    images = host.images_to_core(image)
    batch, _, height, width = images.shape
    with host.node_errors(RUN_INPUTS):
        tiles = _tiles(run, tile_size, tile_overlap)
        size = _output_size(scale, target_width, target_height)
        host.load_for_run(pipeline, run.working_memory(height, width, batch=batch, tiles=tiles, size=size))
        result = run.upscale(images, seed=seed, callback=host.NodeProgress(), cancel=host.cancel_requested,
                             tiles=tiles, color_fix=color_fix, size=size)
    out_height, out_width = result.shape[-2:]
    out_mask = (_resize_mask(mask, batch, out_width, out_height) if mask is not None
                else result.new_zeros(batch, out_height, out_width))
    return host.images_to_comfy(result), host.masks_to_comfy(out_mask)


def _resize_mask(mask, batch: int, width: int, height: int):
    """ComfyUI MASK (1 = transparent, as LoadImage makes it from alpha) -> (batch, height, width), the alpha
    resized the core's way. One mask serves a whole batch; any size is accepted (LoadImage gives a 64x64
    placeholder for pictures without alpha)."""
    masks = host.mask_batch(mask)
    if masks.shape[0] not in (1, batch):
        raise ResShiftNodeError(f"the mask input has {masks.shape[0]} masks for {batch} images: connect one mask, "
                                f"or one per image")
    resized = 1.0 - require_core().upscale_alpha(1.0 - masks.float(), width, height)
    return resized.expand(batch, -1, -1) if resized.shape[0] == 1 else resized


UPSCALE = NodeDefinition(
    node_id="ResShiftPipelineUpscale",
    display_name="ResShift Upscale",
    description=("Upscales an image batch with ResShift diffusion (x4 for the super-resolution releases) in the "
                 "release's 4 or 15 steps (1 for SinSR). Large images are tiled without seams. Any output size: a "
                 "scale or a target width / height (the fewest x4 passes, then an exact resize); an optional colour "
                 "fix. Each image's result depends only on it and the seed, not on the batch: the frames of a video "
                 "share one noise field. The optional mask carries an alpha channel (LoadImage's MASK): it comes out "
                 "resized to the output, ready for Join Image with Alpha."),
    inputs=(PIPELINE_INPUT, IMAGE_INPUT, SEED_INPUT, TILE_SIZE_INPUT, TILE_OVERLAP_INPUT,
            InputDefinition("mask", MASK, "Optional alpha as a ComfyUI mask (1 = transparent, as LoadImage outputs "
                            "it); resized to the output size and passed to the mask output.", optional=True),
            COLOR_FIX_INPUT, SCALE_INPUT, TARGET_WIDTH_INPUT, TARGET_HEIGHT_INPUT),
    outputs=(OutputDefinition(IMAGE, "image", "The upscaled batch (B, sH, sW, 3) in [0, 1]."),
             OutputDefinition(MASK, "mask", "The input mask at the output size (all zeros, i.e. opaque, when no "
                              "mask was connected).")),
    run=upscale,
)


# ------------------------------------------------------------------------------------ encode / sample / decode
def encode(pipeline, image, tile_size: int, tile_overlap: int, mask=None) -> tuple:
    run = _checked(pipeline)
    images = host.images_to_core(image)
    batch, _, height, width = images.shape
    with host.node_errors(RUN_INPUTS):
        tiles = _tiles(run, tile_size, tile_overlap)
        host.load_for_run(pipeline, run.working_memory(height, width, batch=batch, tiles=tiles))
        latent = run.encode_lr(images, mask=None if mask is None else host.mask_batch(mask).unsqueeze(1),
                               callback=host.NodeProgress(previews=False), cancel=host.cancel_requested,
                               tiles=tiles)
    return (latent.to(host.intermediate_device()),)


def sample(pipeline, latent, seed: int) -> tuple:
    run = _checked(pipeline)
    with host.node_errors(RUN_INPUTS):
        host.load_for_run(pipeline, run.working_memory_of(latent.plan))
        sampled = run.sample_latent(latent, seed=seed, callback=host.NodeProgress(), cancel=host.cancel_requested)
    return (sampled.to(host.intermediate_device()),)


def decode(pipeline, latent) -> tuple:
    run = _checked(pipeline)
    with host.node_errors(RUN_INPUTS):
        host.load_for_run(pipeline, run.working_memory_of(latent.plan))
        result = run.decode_latent(latent, callback=host.NodeProgress(previews=False), cancel=host.cancel_requested)
    return (host.images_to_comfy(result),)


ENCODE = NodeDefinition(
    node_id="ResShiftPipelineEncode",
    display_name="ResShift Encode",
    description="Advanced: encodes an image batch into a ResShift latent, the first part of ResShift Upscale. The "
                "tiling chosen here applies to Sample and Decode too. Connect a mask for the inpainting releases.",
    inputs=(PIPELINE_INPUT, IMAGE_INPUT, TILE_SIZE_INPUT, TILE_OVERLAP_INPUT,
            InputDefinition("mask", MASK, "Inpainting releases only: the region to fill (1 = fill).", optional=True)),
    outputs=(OutputDefinition(LATENT, "latent", "The encoded batch: the low-resolution latent and what sampling "
                              "needs."),),
    run=encode,
)
SAMPLE = NodeDefinition(
    node_id="ResShiftPipelineSample",
    display_name="ResShift Sample",
    description="Advanced: runs the diffusion steps on a ResShift latent with a preview of the predicted image "
                "after every network call, the middle part of ResShift Upscale.",
    inputs=(PIPELINE_INPUT, InputDefinition("latent", LATENT, "The latent from ResShift Encode."), SEED_INPUT),
    outputs=(OutputDefinition(LATENT, "latent", "The sampled latent, ready for ResShift Decode."),),
    run=sample,
)
DECODE = NodeDefinition(
    node_id="ResShiftPipelineDecode",
    display_name="ResShift Decode",
    description="Advanced: decodes a sampled ResShift latent into the output image batch, the last part of "
                "ResShift Upscale.",
    inputs=(PIPELINE_INPUT, InputDefinition("latent", LATENT, "The latent from ResShift Sample.")),
    outputs=(OutputDefinition(IMAGE, "image", "The result (B, sH, sW, 3) in [0, 1]."),),
    run=decode,
)


# ---------------------------------------------------------------------------------------------------- inpaint
def inpaint(pipeline, image, mask, seed: int, tile_size: int, tile_overlap: int) -> tuple:
    run = _checked(pipeline)
    images = host.images_to_core(image)
    batch, _, height, width = images.shape
    with host.node_errors(RUN_INPUTS):
        tiles = _tiles(run, tile_size, tile_overlap)
        host.load_for_run(pipeline, run.working_memory(height, width, batch=batch, tiles=tiles))
        result = run.upscale(images, mask=host.mask_batch(mask).unsqueeze(1), seed=seed,
                             callback=host.NodeProgress(), cancel=host.cancel_requested, tiles=tiles)
    return (host.images_to_comfy(result),)


INPAINT = NodeDefinition(
    node_id="ResShiftPipelineInpaint",
    display_name="ResShift Inpaint",
    description="Fills the masked region of an image batch with the ResShift inpainting releases "
                "(inpaint-imagenet, inpaint-face); the rest of the image is kept.",
    inputs=(PIPELINE_INPUT, IMAGE_INPUT,
            InputDefinition("mask", MASK, "The region to fill: 1 (white) = fill, 0 = keep; one mask for the batch "
                            "or one per image."),
            SEED_INPUT, TILE_SIZE_INPUT, TILE_OVERLAP_INPUT),
    outputs=(OutputDefinition(IMAGE, "image", "The inpainted batch, same size as the input."),),
    run=inpaint,
)


# ------------------------------------------------------------------------------------------------- colour fix
def fix_colors(image, reference, method: str) -> tuple:
    require_core()
    with host.node_errors({"color_fix": "method", "output": "image", "reference": "reference"}):
        fixed = core.color_fix(host.images_to_core(image).to(host.intermediate_device()),
                               host.images_to_core(reference).to(host.intermediate_device()), method)
    return (host.images_to_comfy(fixed),)


COLOR_FIX = NodeDefinition(
    node_id="ResShiftPipelineColorFix",
    display_name="ResShift Color Fix",
    description="Brings an upscaled image's colours back to those of a reference (the image before upscaling, at "
                "any size), after any upscaler: 'wavelet' keeps the fine detail and takes the reference's low "
                "frequencies (StableSR's wavelet colour fix), 'adain' matches each channel's mean and spread.",
    inputs=(InputDefinition("image", IMAGE, "The upscaled batch (B, H, W, 3) in [0, 1]."),
            InputDefinition("reference", IMAGE, "The reference batch, e.g. the input of the upscaler (one image for "
                            "the batch, or one per image; any size)."),
            InputDefinition("method", COMBO, "wavelet (keeps detail) or adain; none passes the image through.",
                            options=lambda: list(COLOR_FIXES), default="wavelet")),
    outputs=(OutputDefinition(IMAGE, "image", "The colour-fixed batch, same size as the image input."),),
    run=fix_colors,
)


def _checked(pipeline):
    """The core pipeline inside the loader's output, after checking that the socket got what it expects."""
    require_core()
    if not isinstance(pipeline, host.LoadedResShift):
        raise ResShiftNodeError(f"the pipeline input expects the output of Load ResShift Pipeline, got "
                                f"{type(pipeline).__name__}")
    return pipeline.pipeline


NODES = (LOADER, UPSCALE, ENCODE, SAMPLE, DECODE, INPAINT, COLOR_FIX)
