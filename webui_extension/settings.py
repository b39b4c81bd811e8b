"""The extension's settings, shown in Settings > Upscaling and reachable through ``/sdapi/v1/options``."""

from __future__ import annotations

from dataclasses import dataclass, field

from resshift_core import LICENSE_URL, WEIGHTS_LICENSE, Vocabulary

SECTION = ("upscaling", "Upscaling")
DTYPE_CHOICES = ("Automatic", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Setting:
    """One option: its key in ``shared.opts``, default, label, the gradio component's name and arguments."""

    key: str
    default: object
    label: str
    component: str
    component_args: dict = field(default_factory=dict)
    info: str = ""


SETTINGS = (
    Setting("resshift_seed", -1, "ResShift seed", "Number", {"precision": 0},
            "-1 = a new random seed for every image; the seed used is written to the image's infotext"),
    Setting("resshift_tile_size", 256, "Tile size for ResShift upscalers", "Slider",
            {"minimum": 0, "maximum": 1024, "step": 16},
            "input pixels; larger inputs are processed in blended tiles with one noise field; 0 = no tiling "
            "(memory grows with the square of the image area)"),
    Setting("resshift_tile_overlap", 32, "Tile overlap for ResShift upscalers", "Slider",
            {"minimum": 0, "maximum": 256, "step": 8}, "input pixels"),
    Setting("resshift_dtype", "Automatic", "ResShift precision", "Radio", {"choices": list(DTYPE_CHOICES)},
            "Automatic = float16 on a GPU, float32 on the CPU or with --no-half"),
    Setting("resshift_keep_loaded", True, "Keep the ResShift model loaded between images", "Checkbox", {},
            "off frees its memory after every image (slower: the model is read again each time)"),
    Setting("resshift_download", True, "Download missing ResShift weights on first use", "Checkbox", {},
            f"the official weights are under the {WEIGHTS_LICENSE}: {LICENSE_URL}"),
)

DEFAULTS = {setting.key: setting.default for setting in SETTINGS}
LABELS = {setting.key: setting.label for setting in SETTINGS}

# How the core's advice names what a WebUI user controls.
VOCABULARY = Vocabulary(names={
    "seed": f"Settings > Upscaling > {LABELS['resshift_seed']}",
    "tile_size": f"Settings > Upscaling > {LABELS['resshift_tile_size']}",
    "tile_overlap": f"Settings > Upscaling > {LABELS['resshift_tile_overlap']}",
    "tiling": f"Settings > Upscaling > {LABELS['resshift_tile_size']}",
    "dtype": f"Settings > Upscaling > {LABELS['resshift_dtype']}",
    "offline": f"Settings > Upscaling > {LABELS['resshift_download']}",
    "release": "the upscaler (one entry per release)",
    "unet": "the model file in models/ResShift (or --resshift-models-path)",
    "autoencoder": "the autoencoder file in models/ResShift (or --resshift-models-path)",
    "cache_dir": "models/ResShift (or --resshift-models-path)",
    "scale": "the upscale factor",
}, setting="{name} = {value}")


def value(opts, key: str):
    """The current value of one of our options (its default before the settings page has registered it)."""
    return getattr(opts, key, DEFAULTS[key])


def live_previews(opts) -> bool:
    """The WebUI's own "Show live previews" setting."""
    return bool(getattr(opts, "live_previews_enable", False))


def register(shared, gradio) -> None:
    """Add every option to ``shared.opts`` (called from the WebUI's ``on_ui_settings`` callback)."""
    for setting in SETTINGS:
        info = shared.OptionInfo(setting.default, setting.label, getattr(gradio, setting.component),
                                 dict(setting.component_args), section=SECTION)
        shared.opts.add_option(setting.key, info.info(setting.info) if setting.info else info)
