"""The ResShift nodes: a loader, one-node upscaling, the encode / sample / decode split, and inpainting.

Each node is one :class:`~.definitions.NodeDefinition` (inputs with tooltips, outputs, description) and one run
function. A run function takes ComfyUI's values, calls the core once inside :func:`.host.node_errors`, reports
progress through :class:`.host.NodeProgress` and converts the result back; nothing ResShift-specific is decided here.

Node ids and socket types carry the ``ResShiftPipeline`` / ``RESSHIFT_PIPELINE`` names so that they cannot clash
with the other ResShift pack (``ResShiftLoader``, ``ResShiftUpscale``, ``RESSHIFT_MODEL``).
"""

from __future__ import annotations

from . import host
from .core_access import ResShiftNodeError, core, hub, require_core
from .definitions import COMBO, IMAGE, INT, MASK, InputDefinition, NodeDefinition, OutputDefinition

PIPELINE = "RESSHIFT_PIPELINE"
LATENT = "RESSHIFT_LATENT"
AUTO = "auto"
DTYPES = (AUTO, "fp32", "fp16", "bf16")
MAX_SEED = 0xFFFFFFFFFFFFFFFF
MAX_TILE = 4096

LICENSE_NOTE = ("Official weights are published by the ResShift authors under the S-Lab License 1.0 "
                "(non-commercial use only); downloading them means accepting it.")
if core is not None:
    LICENSE_NOTE = (f"Official weights are published by the ResShift authors under the {core.WEIGHTS_LICENSE} "
                    f"({core.LICENSE_URL}); downloading them means accepting it.")


# ---------------------------------------------------------------------------------------------- option lists
def release_options() -> list[str]:
    return [AUTO] + (list(core.RELEASES) if core is not None else [])


def unet_file_options() -> list[str]:
    official = [release.file_name for release in core.RELEASES.values()] if core is not None else []
    return host.model_file_options(official)


def autoencoder_file_options() -> list[str]:
    official = [autoencoder.file_name for autoencoder in core.AUTOENCODERS.values()] if core is not None else []
    return host.model_file_options(official)


# --------------------------------------------------------------------------------------------- shared inputs
PIPELINE_INPUT = InputDefinition("pipeline", PIPELINE, "The ResShift networks from the Load ResShift Pipeline node.")
IMAGE_INPUT = InputDefinition("image", IMAGE, "The image batch to process (B, H, W, 3) in [0, 1].")
SEED_INPUT = InputDefinition(
    "seed", INT, "Seed of the diffusion noise: the same seed, image and settings give the same result on any "
    "device.", default=0, minimum=0, maximum=MAX_SEED, seed_widget=True)
TILE_SIZE_INPUT = InputDefinition(
    "tile_size", INT, "Largest tile, in latent pixels (= input pixels for the x4 models; a multiple of 64 for the "
    "official models). Larger images are processed in overlapping tiles blended into one latent with one noise "
    "field, so no seams show. 0 = the model's preferred size for this device. On out-of-memory the run retries "
    "with smaller tiles.", default=0, minimum=0, maximum=MAX_TILE, step=64)
TILE_OVERLAP_INPUT = InputDefinition(
    "tile_overlap", INT, "Least overlap between neighbouring tiles, in latent pixels; -1 = the model's default.",
    default=-1, minimum=-1, maximum=MAX_TILE // 2, step=1)

#: The core's canonical argument names -> this pack's input names (for the advice in error messages).
RUN_INPUTS = {"tile_size": "tile_size", "tile_overlap": "tile_overlap", "seed": "seed", "images": "image",
              "mask": "mask", "latent": "latent"}


def _tiling(tile_size: int, tile_overlap: int) -> dict:
    """The core's tiling keywords; 0 / -1 leave the choice to the core."""
    return {"tile_size": tile_size or None, "tile_overlap": None if tile_overlap < 0 else tile_overlap}


# ----------------------------------------------------------------------------------------------------- loader
LOADER_INPUTS = {"unet": "unet_name", "autoencoder": "vae_name", "release": "release", "dtype": "dtype"}


def _model_paths(*names: str) -> list[str]:
    """The files behind the combo choices: from the resshift model folders, or, for official file names not there
    yet, downloaded into models/resshift in one request (so that, offline, the core's error names every missing
    file at once)."""
    paths = {name: host.find_model_file(name) for name in names}
    wanted = {name: require_core().official_file(name) for name, path in paths.items() if path is None}
    unknown = [name for name, item in wanted.items() if item is None]
    if unknown:
        raise ResShiftNodeError(f"{', '.join(unknown)} is not in the resshift model folders "
                                f"({', '.join(host.model_folders())}) and is not an official file that could be "
                                f"downloaded: put the file there and refresh the page")
    if wanted:
        fetched = hub.fetch_files(list(wanted.values()), cache_dir=host.default_models_dir(),
                                  progress=host.download_progress(", ".join(wanted)))
        paths.update(zip(wanted, map(str, fetched)))
    return [paths[name] for name in names]


def load_pipeline(unet_name: str, vae_name: str, release: str, dtype: str) -> tuple:
    rc = require_core()
    with host.node_errors(LOADER_INPUTS):
        unet_path, vae_path = host.find_model_file(unet_name), None
        if unet_path is None:  # an official file still to download: every release is latent, fetch both at once
            unet_path, vae_path = _model_paths(unet_name, vae_name)
        unet = rc.load_model(unet_path, expect="unet", release=None if release == AUTO else release)
        autoencoder = None
        if unet.latent_space:  # a pixel-space model (e.g. from train/) uses no autoencoder: vae_name is not fetched
            if vae_path is None:
                (vae_path,) = _model_paths(vae_name)
            autoencoder = rc.load_model(vae_path, expect="autoencoder")
        return (host.wrap_networks(unet, autoencoder, host.choose_dtype(dtype, unet)),)


LOADER = NodeDefinition(
    node_id="ResShiftPipelineLoader",
    display_name="Load ResShift Pipeline",
    description=("Loads a ResShift diffusion UNet and its VQ autoencoder from models/resshift (folders listed under "
                 "'resshift:' in extra_model_paths.yaml work too). Official files that are not there yet are "
                 "downloaded into models/resshift on first use. A pixel-space UNet (e.g. one trained with the "
                 "pack's train/ recipes) needs no autoencoder: vae_name is then not used. " + LICENSE_NOTE),
    inputs=(
        InputDefinition("unet_name", COMBO, "The diffusion network (UNet) file, e.g. resshift_realsrx4_s4_v3.pth. "
                        "Official names not yet in models/resshift are downloaded when the node runs. "
                        + LICENSE_NOTE, options=unet_file_options, default="resshift_realsrx4_s4_v3.pth"),
        InputDefinition("vae_name", COMBO, "The VQ autoencoder file the UNet was trained with (autoencoder_vq_f4.pth "
                        "for the super-resolution and ImageNet inpainting releases); not used by pixel-space UNets.",
                        options=autoencoder_file_options, default="autoencoder_vq_f4.pth"),
        InputDefinition("release", COMBO, "Which release the UNet is: 'auto' reads it from the file (official name "
                        "or metadata). The noise schedule cannot be read from the weights, so renamed files need it.",
                        options=release_options, default=AUTO),
        InputDefinition("dtype", COMBO, "Precision of the networks: 'auto' follows ComfyUI's choice for the device "
                        "(float32 on the CPU).", options=lambda: list(DTYPES), default=AUTO),
    ),
    outputs=(OutputDefinition(PIPELINE, "pipeline", "Both networks, managed by ComfyUI's model management."),),
    run=load_pipeline,
)


# ---------------------------------------------------------------------------------------------------- upscale
def upscale(pipeline, image, seed: int, tile_size: int, tile_overlap: int, mask=None) -> tuple:
    run = _checked(pipeline)
    images = host.images_to_core(image)
    batch, _, height, width = images.shape
    settings = _tiling(tile_size, tile_overlap)
    with host.node_errors(RUN_INPUTS):
        host.load_for_run(pipeline, run.working_memory(height, width, batch=batch, **settings))
        result = run.upscale(images, seed=seed, callback=host.NodeProgress(), cancel=host.cancel_requested,
                             **settings)
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
                 "release's 4 or 15 steps (1 for SinSR). Large images are tiled without seams. The optional mask "
                 "carries an alpha channel (LoadImage's MASK): it comes out resized to the output, ready for Join "
                 "Image with Alpha."),
    inputs=(PIPELINE_INPUT, IMAGE_INPUT, SEED_INPUT, TILE_SIZE_INPUT, TILE_OVERLAP_INPUT,
            InputDefinition("mask", MASK, "Optional alpha as a ComfyUI mask (1 = transparent, as LoadImage outputs "
                            "it); resized to the output size and passed to the mask output.", optional=True)),
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
    settings = _tiling(tile_size, tile_overlap)
    with host.node_errors(RUN_INPUTS):
        host.load_for_run(pipeline, run.working_memory(height, width, batch=batch, **settings))
        latent = run.encode_lr(images, mask=None if mask is None else host.mask_batch(mask).unsqueeze(1),
                               callback=host.NodeProgress(previews=False), cancel=host.cancel_requested,
                               **settings)
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
    settings = _tiling(tile_size, tile_overlap)
    with host.node_errors(RUN_INPUTS):
        host.load_for_run(pipeline, run.working_memory(height, width, batch=batch, **settings))
        result = run.upscale(images, mask=host.mask_batch(mask).unsqueeze(1), seed=seed,
                             callback=host.NodeProgress(), cancel=host.cancel_requested, **settings)
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


def _checked(pipeline):
    """The core pipeline inside the loader's output, after checking that the socket got what it expects."""
    require_core()
    if not isinstance(pipeline, host.LoadedResShift):
        raise ResShiftNodeError(f"the pipeline input expects the output of Load ResShift Pipeline, got "
                                f"{type(pipeline).__name__}")
    return pipeline.pipeline


NODES = (LOADER, UPSCALE, ENCODE, SAMPLE, DECODE, INPAINT)
