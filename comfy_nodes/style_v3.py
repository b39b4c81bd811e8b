"""Node classes in ComfyUI's V3 schema (``comfy_api.latest``), built from the pack's node definitions."""

from __future__ import annotations

from .definitions import BOOLEAN, COMBO, FLOAT, IMAGE, INT, MASK, InputDefinition, NodeDefinition, OutputDefinition


class _V3Types:
    """Maps the definitions' kinds onto ``io`` types; a custom kind gets one ``io.Custom`` type, reused."""

    def __init__(self, io):
        self.io = io
        self._custom = {}

    def comfy_type(self, kind: str):
        known = {IMAGE: self.io.Image, MASK: self.io.Mask}
        if kind in known:
            return known[kind]
        if kind not in self._custom:
            self._custom[kind] = self.io.Custom(kind)
        return self._custom[kind]

    def input(self, spec: InputDefinition):
        io = self.io
        if spec.kind == INT:
            return io.Int.Input(spec.name, tooltip=spec.tooltip_text(), optional=spec.optional, default=spec.default,
                                min=spec.minimum, max=spec.maximum, step=spec.step,
                                control_after_generate=True if spec.seed_widget else None)
        if spec.kind == FLOAT:
            return io.Float.Input(spec.name, tooltip=spec.tooltip_text(), optional=spec.optional, default=spec.default,
                                  min=spec.minimum, max=spec.maximum, step=spec.step)
        if spec.kind == BOOLEAN:
            return io.Boolean.Input(spec.name, tooltip=spec.tooltip_text(), optional=spec.optional,
                                    default=spec.default)
        if spec.kind == COMBO:
            options = spec.option_list()
            return io.Combo.Input(spec.name, options=options, tooltip=spec.tooltip_text(), optional=spec.optional,
                                  default=spec.default_option(options))
        return self.comfy_type(spec.kind).Input(spec.name, tooltip=spec.tooltip_text(), optional=spec.optional)

    def output(self, spec: OutputDefinition):
        return self.comfy_type(spec.kind).Output(display_name=spec.name, tooltip=spec.tooltip)


def build_v3_nodes(definitions: list[NodeDefinition], io) -> list[type]:
    """One ``io.ComfyNode`` subclass per definition (``io`` is ``comfy_api.latest.io``)."""
    types = _V3Types(io)
    return [_v3_node(definition, io, types) for definition in definitions]


def _v3_node(definition: NodeDefinition, io, types: _V3Types) -> type:
    def define_schema(cls):
        # Called whenever ComfyUI lists the node, so combo options (model files) are current.
        return io.Schema(node_id=definition.node_id, display_name=definition.display_name,
                         category=definition.category, description=definition.description,
                         inputs=[types.input(spec) for spec in definition.inputs],
                         outputs=[types.output(spec) for spec in definition.outputs])

    def execute(cls, **inputs):
        return io.NodeOutput(*definition.run(**inputs))

    return type(definition.node_id, (io.ComfyNode,), {
        "__doc__": definition.description,
        "__module__": __name__,
        "define_schema": classmethod(define_schema),
        "execute": classmethod(execute),
    })


def build_extension(definitions: list[NodeDefinition], comfy_extension_base: type, io) -> type:
    """The ``ComfyExtension`` subclass that hands ComfyUI the V3 node list."""
    nodes = build_v3_nodes(definitions, io)

    async def get_node_list(self) -> list[type]:
        return list(nodes)

    return type("ResShiftExtension", (comfy_extension_base,), {"get_node_list": get_node_list,
                                                               "__module__": __name__})
