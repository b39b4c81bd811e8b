# WebUI entry (A1111 / Forge / reForge): the WebUI runs every file in this folder as a script, with the repository
# root on sys.path. All code lives in webui_extension/, over resshift_core/.
from webui_extension.entry import ScriptPostprocessingResShiftSeed, ScriptResShiftSeed, UpscalerResShift, install

__all__ = ["ScriptPostprocessingResShiftSeed", "ScriptResShiftSeed", "UpscalerResShift"]

install()
