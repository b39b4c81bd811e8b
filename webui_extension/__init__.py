"""ResShift in the AUTOMATIC1111 / Forge / reForge WebUI: an ``Upscaler`` over :mod:`resshift_core`.

The WebUI imports ``scripts/resshift_upscaler.py`` at the repository root (with the root on ``sys.path``), which
imports :mod:`webui_extension.entry`. Nothing here is imported by the core, ComfyUI or the CLI.
"""
