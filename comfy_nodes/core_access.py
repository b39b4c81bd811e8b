"""The pack's one door to ``resshift_core``: imported from the pack's own folder, never the pip package.

ComfyUI imports the repository root as a package (``custom_nodes/<folder>``) without putting the folder on
``sys.path``, so the core is reached by a relative import. When one of its dependencies is missing, importing the
pack must not fail ComfyUI: the missing package is named in one log line, the nodes are still listed, and each node
says what to install when it runs.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class ResShiftNodeError(Exception):
    """What a ResShift node raises: ComfyUI shows its message as the node's error."""


# ComfyUI reports an error's type as "<module>.<class>"; the module of a custom node folder is its full path on disk.
ResShiftNodeError.__module__ = "ResShift"


try:
    import safetensors  # noqa: F401  (the core imports it only when loading; checked now so start-up names it)

    from .. import resshift_core as core
    from ..resshift_core import hub
    MISSING_DEPENDENCY: str | None = None
except ImportError as error:  # a missing package must not stop ComfyUI from starting
    core = hub = None
    MISSING_DEPENDENCY = error.name or str(error)
    logger.error("[ResShift] the Python package '%s' is missing, so the ResShift nodes cannot run: install it with "
                 "`pip install -r requirements.txt` in the ResShift node folder (or from ComfyUI-Manager) and "
                 "restart ComfyUI", MISSING_DEPENDENCY)


def require_core():
    """The ``resshift_core`` module, or a node error naming the package to install."""
    if core is None:
        raise ResShiftNodeError(
            f"the ResShift nodes cannot run because the Python package '{MISSING_DEPENDENCY}' is not installed in "
            f"ComfyUI's Python: run `pip install -r requirements.txt` in the ResShift node folder (ComfyUI-Manager "
            f"does this on install) and restart ComfyUI")
    return core
