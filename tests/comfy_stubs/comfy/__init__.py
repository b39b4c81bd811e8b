"""Stand-in of ComfyUI's ``comfy`` package for the node contract tests."""
