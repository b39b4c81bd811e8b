"""ComfyUI nodes over ``resshift_core``.

:func:`register` is what the repository root's ``__init__.py`` calls: it registers the ``models/resshift`` folder
and returns the nodes in the style the running ComfyUI loads (the V3 schema where ``comfy_api`` exists, classic
``NODE_CLASS_MAPPINGS`` otherwise), built from one definition per node (:mod:`.nodes`).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def _v3_api():
    """``(ComfyExtension, io)`` of ``comfy_api.latest``, or None on a ComfyUI without the V3 schema."""
    try:
        from comfy_api.latest import ComfyExtension, io
    except ImportError:
        return None
    return ComfyExtension, io


def register() -> dict:
    """The names the root package exports: ``{"comfy_entrypoint": ...}`` (V3) or
    ``{"NODE_CLASS_MAPPINGS": ..., "NODE_DISPLAY_NAME_MAPPINGS": ...}`` (classic)."""
    from . import host
    from .nodes import NODES

    host.register_models_folder()
    v3 = _v3_api()
    if v3 is None:
        from .style_classic import build_classic_mappings

        classes, names = build_classic_mappings(list(NODES))
        return {"NODE_CLASS_MAPPINGS": classes, "NODE_DISPLAY_NAME_MAPPINGS": names}

    from .style_v3 import build_extension

    extension = build_extension(list(NODES), *v3)

    async def comfy_entrypoint():
        return extension()

    return {"comfy_entrypoint": comfy_entrypoint}
