"""Stand-in of ``comfy.cli_args``: the parsed command line (only what the nodes read)."""

from types import SimpleNamespace

args = SimpleNamespace(preview_size=512)
