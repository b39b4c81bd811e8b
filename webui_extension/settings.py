"""The extension's settings, shown in Settings > Upscaling and reachable through ``/sdapi/v1/options``."""

from __future__ import annotations

from dataclasses import dataclass, field

from resshift_core import COLOR_FIX_METHODS, LICENSE_URL, WEIGHTS_LICENSE, Vocabulary, official_tile_range

SECTION = ("upscaling", "Upscaling")
DTYPE_CHOICES = ("Automatic", "float32", "float16", "bfloat16")
DTYPE_NAMES = {"Automatic": "auto"}  # the others are names the core reads
TILE_MINIMUM, TILE_STEP = official_tile_range()


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
    Setting("resshift_tile_size", 0, "Tile size for ResShift upscalers", "Slider",
            {"minimum": 0, "maximum": 1024, "step": TILE_STEP},
            f"input pixels, a multiple of {TILE_STEP}; 0 = the model's default for the device. Inputs run untiled "
            f"(the official computation) while that fits in memory and is not much slower, larger ones in blended "
            f"tiles with one noise field"),
    Setting("resshift_tile_overlap", -1, "Tile overlap for ResShift upscalers", "Slider",
            {"minimum": -1, "maximum": 256, "step": 1}, "input pixels; -1 = the default (a quarter of the tile at "
            "most)"),
    Setting("resshift_dtype", "Automatic", "ResShift precision", "Radio", {"choices": list(DTYPE_CHOICES)},
            "Automatic = float16 on a GPU, float32 on the CPU or with --no-half / --upcast-sampling"),
    Setting("resshift_color_fix", "none", "ResShift colour fix", "Radio", {"choices": list(COLOR_FIX_METHODS)},
            "bring the result's colours back to the input's: wavelet keeps the detail, adain matches each "
            "channel's mean and spread; none = the official computation"),
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
    "color_fix": f"Settings > Upscaling > {LABELS['resshift_color_fix']}",
    "size": "the upscale factor / target size", "width": "the target width", "height": "the target height",
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
