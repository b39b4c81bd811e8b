"""Stand-in of ComfyUI's ``comfy_api`` package (the V3 node schema)."""
