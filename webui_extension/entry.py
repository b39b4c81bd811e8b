"""Everything the WebUI picks up from ``scripts/resshift_upscaler.py``: the upscaler class, the settings callback,
and two small scripts that write the seed used into the infotext (Extras, and txt2img / img2img for hires fix and
SD upscale)."""

from __future__ import annotations

from modules import modelloader, script_callbacks, scripts, scripts_postprocessing, shared

from . import forge, progress, settings
from .upscaler import ENTRIES, UpscalerResShift

INFOTEXT_KEY = "ResShift seed"


def on_ui_settings() -> None:
    import gradio

    settings.register(shared, gradio)


class ScriptPostprocessingResShiftSeed(scripts_postprocessing.ScriptPostprocessing):
    """Extras: marks the image being processed (for the progress bar) and adds the seed to its infotext."""

    name = "ResShift seed"
    order = 100000  # after every upscaling script

    def ui(self):
        return {}

    def process_firstpass(self, pp, **args):
        progress.take_seeds(shared.state)
        progress.mark_extras_image(shared.state)

    def process(self, pp, **args):
        text = progress.seeds_infotext(progress.take_seeds(shared.state))
        if text is not None:
            pp.info[INFOTEXT_KEY] = text


class ScriptResShiftSeed(scripts.Script):
    """txt2img / img2img: hires fix and SD upscale call upscalers inside a generation; the seed goes to its
    infotext."""

    def title(self):
        return "ResShift seed"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def postprocess_batch(self, p, *args, **kwargs):
        text = progress.seeds_infotext(progress.take_seeds(shared.state))
        if text is not None:
            p.extra_generation_params[INFOTEXT_KEY] = text


def install() -> None:
    """Register the callbacks (called once per script load)."""
    script_callbacks.on_ui_settings(on_ui_settings)
    prefixes = tuple(sorted({name.split(" ")[0] + " " for _, name in ENTRIES}))
    forge.ensure_listed(modelloader, shared, UpscalerResShift, prefixes)
    script_callbacks.on_script_unloaded(lambda: forge.restore_load_upscalers(modelloader))
