"""Node classes in ComfyUI's classic style (``NODE_CLASS_MAPPINGS``), built from the pack's node definitions.

This is what ComfyUI versions without ``comfy_api`` (before V3, e.g. the March 2024 engine) load.
"""

from __future__ import annotations

from .definitions import BOOLEAN, COMBO, FLOAT, INT, InputDefinition, NodeDefinition


def _classic_input(spec: InputDefinition) -> tuple:
    settings = {"tooltip": spec.tooltip_text()}
    if spec.kind == COMBO:
        options = spec.option_list()
        default = spec.default_option(options)
        if default is not None:
            settings["default"] = default
        return (options, settings)
    if spec.kind in (INT, FLOAT, BOOLEAN):
        for key, value in (("default", spec.default), ("min", spec.minimum), ("max", spec.maximum),
                           ("step", spec.step)):
            if value is not None:
                settings[key] = value
        if spec.seed_widget:
            settings["control_after_generate"] = True
    return (spec.kind, settings)


def build_classic_node(definition: NodeDefinition) -> type:
    """A class with ``INPUT_TYPES``, ``RETURN_TYPES``, ``FUNCTION`` ... as ComfyUI's classic loader expects."""

    def input_types(cls):
        # Called whenever ComfyUI lists the node, so combo options (model files) are current.
        required = {s.name: _classic_input(s) for s in definition.inputs if not s.optional}
        optional = {s.name: _classic_input(s) for s in definition.inputs if s.optional}
        return {"required": required, "optional": optional} if optional else {"required": required}

    def run(self, **inputs):
        return tuple(definition.run(**inputs))

    return type(definition.node_id, (), {
        "__doc__": definition.description,
        "__module__": __name__,
        "INPUT_TYPES": classmethod(input_types),
        "RETURN_TYPES": tuple(o.kind for o in definition.outputs),
        "RETURN_NAMES": tuple(o.name for o in definition.outputs),
        "OUTPUT_TOOLTIPS": tuple(o.tooltip for o in definition.outputs),
        "FUNCTION": "run",
        "CATEGORY": definition.category,
        "DESCRIPTION": definition.description,
        "run": run,
    })


def build_classic_mappings(definitions: list[NodeDefinition]) -> tuple[dict[str, type], dict[str, str]]:
    """(NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS)."""
    classes = {d.node_id: build_classic_node(d) for d in definitions}
    names = {d.node_id: d.display_name for d in definitions}
    return classes, names
