"""ComfyUI entry point of this repository (ComfyUI imports the folder in custom_nodes/ as a package).

It only hands over what ``comfy_nodes.register()`` builds: ``comfy_entrypoint`` on a ComfyUI with the V3 schema,
``NODE_CLASS_MAPPINGS`` on an older one (ComfyUI prefers the mappings when both exist, so exactly one is exported).
Imported anywhere else (pytest collects this folder as a package) it does nothing.
"""

import importlib.util as _importlib_util

if _importlib_util.find_spec("folder_paths") is not None:  # ComfyUI's own module: we are inside ComfyUI
    from .comfy_nodes import register as _register

    globals().update(_register())
