"""Stand-in of ``comfy_api.latest.io``: the V3 schema classes the ResShift nodes use.

Like ComfyUI's, a type class has nested ``Input`` / ``Output`` classes, inputs carry an id, tooltip and ``optional``
flag, ``Schema.validate`` rejects duplicate ids, and a node is a ``ComfyNode`` subclass that overrides
``define_schema`` and ``execute``.
"""

from dataclasses import dataclass, field


class Input:
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, extra_dict=None):
        self.id, self.display_name, self.optional, self.tooltip = id, display_name, optional, tooltip
        self.io_type = type(self).io_type


class WidgetInput(Input):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, **extra):
        super().__init__(id, display_name, optional, tooltip, lazy)
        self.default = default
        self.extra = extra


class Output:
    def __init__(self, id=None, display_name=None, tooltip=None, is_output_list=False):
        self.id, self.display_name, self.tooltip = id, display_name, tooltip
        self.io_type = type(self).io_type


def _comfytype(io_type, input_base=Input):
    class ComfyType:
        pass

    ComfyType.io_type = io_type
    ComfyType.Input = type("Input", (input_base,), {"io_type": io_type})
    ComfyType.Output = type("Output", (Output,), {"io_type": io_type})
    return ComfyType


Image = _comfytype("IMAGE")
Mask = _comfytype("MASK")
Boolean = _comfytype("BOOLEAN", WidgetInput)


class _IntInput(WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, control_after_generate=None, display_mode=None, socketless=None,
                 force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default)
        self.min, self.max, self.step = min, max, step
        self.control_after_generate = control_after_generate


class _ComboInput(WidgetInput):
    def __init__(self, id, options=None, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 control_after_generate=None, upload=None, image_folder=None, remote=None, socketless=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default)
        self.options = options


class _FloatInput(WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, round=None, display_mode=None, socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default)
        self.min, self.max, self.step = min, max, step


Int = _comfytype("INT", _IntInput)
Float = _comfytype("FLOAT", _FloatInput)
Combo = _comfytype("COMBO", _ComboInput)


def Custom(io_type):
    return _comfytype(io_type)


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    description: str = ""

    def validate(self):
        input_ids = [i.id for i in self.inputs]
        if len(set(input_ids)) != len(input_ids):
            raise ValueError(f"input ids must be unique: {input_ids}")
        for number, output in enumerate(self.outputs):
            if output.id is None:
                output.id = f"_{number}_{output.io_type}_"
        if set(input_ids) & {o.id for o in self.outputs}:
            raise ValueError("input and output ids must differ")


class NodeOutput:
    def __init__(self, *args, ui=None):
        self.args = args
        self.ui = ui

    @property
    def result(self):
        return self.args or None


class ComfyNode:
    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        if cls.define_schema.__func__ is ComfyNode.define_schema.__func__:
            raise TypeError(f"{cls.__name__} defines no define_schema")
        if cls.execute.__func__ is ComfyNode.execute.__func__:
            raise TypeError(f"{cls.__name__} defines no execute")
        schema = cls.define_schema()
        schema.validate()
        return schema
