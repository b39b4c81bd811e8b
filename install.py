"""Install hook run by two hosts, each in its own way.

- The AUTOMATIC1111 / Forge WebUI runs it at start-up with its own folder on PYTHONPATH, so ``import launch`` finds
  its helpers: whatever the core needs that the WebUI's venv lacks is installed through ``launch.run_pip``.
- ComfyUI-Manager installs requirements.txt itself and then runs this file from the node folder, where no ``launch``
  module exists: nothing is installed then (the Comfy Registry forbids installing packages at run time).
"""

import sys

# What resshift_core imports at run time: (module to look for, pip requirement). torch is the host's own.
RUNTIME_NEEDS = (("numpy", "numpy"), ("PIL", "pillow"), ("safetensors", "safetensors"), ("einops", "einops"),
                 ("tqdm", "tqdm"))


def webui_launch_module():
    """The WebUI's ``launch`` module, or None when another host (ComfyUI-Manager, pip) runs this file."""
    try:
        import launch
    except ImportError:
        return None
    if hasattr(launch, "is_installed") and hasattr(launch, "run_pip"):
        return launch
    return None


def main() -> int:
    launch = webui_launch_module()
    if launch is None:
        print("ResShift: not run by the WebUI; nothing to install here (requirements.txt lists the dependencies)")
        return 0
    for module, requirement in RUNTIME_NEEDS:
        if not launch.is_installed(module):
            launch.run_pip(f"install {requirement}", f"{requirement} for ResShift")
    return 0


if __name__ == "__main__":
    sys.exit(main())
