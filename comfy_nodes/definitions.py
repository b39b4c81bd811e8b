"""One host-neutral definition per node, from which both of ComfyUI's node styles are built.

A :class:`NodeDefinition` says what a node is (id, names, category, description, typed inputs with tooltips, typed
outputs) and which function runs it. :mod:`.style_v3` turns it into a ``comfy_api`` V3 node class and
:mod:`.style_classic` into a ``NODE_CLASS_MAPPINGS`` class, so the two styles cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# The value types ComfyUI knows by name; anything else is a custom socket type of this pack.
IMAGE, MASK, INT, FLOAT, BOOLEAN, COMBO = "IMAGE", "MASK", "INT", "FLOAT", "BOOLEAN", "COMBO"
WIDGET_KINDS = (INT, FLOAT, BOOLEAN, COMBO)
CATEGORY = "image/upscaling/ResShift"


@dataclass(frozen=True)
class InputDefinition:
    """One input socket or widget.

    Attributes:
        name: the keyword the run function receives.
        kind: IMAGE, MASK, INT, FLOAT, BOOLEAN, COMBO or a custom type name (e.g. ``RESSHIFT_PIPELINE``).
        tooltip: shown when hovering the input (a function: computed each time ComfyUI lists the node).
        default, minimum, maximum, step: widget settings (INT / FLOAT / BOOLEAN / COMBO).
        options: COMBO only: called each time ComfyUI asks for the node's inputs, so that files added to a models
            folder appear after a refresh.
        optional: the socket may stay unconnected; the run function then does not receive it.
        seed_widget: an INT the front-end offers to randomise after every run.
    """

    name: str
    kind: str
    tooltip: str | Callable[[], str]
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    options: Callable[[], Sequence[str]] | None = None
    optional: bool = False
    seed_widget: bool = False

    def __post_init__(self):
        if not self.tooltip:
            raise ValueError(f"input {self.name!r} needs a tooltip")
        if (self.kind == COMBO) != (self.options is not None):
            raise ValueError(f"input {self.name!r}: options are given exactly for COMBO inputs")

    def tooltip_text(self) -> str:
        return self.tooltip() if callable(self.tooltip) else self.tooltip

    def option_list(self) -> list[str]:
        return list(self.options()) if self.options is not None else []

    def default_option(self, options: Sequence[str]) -> Any:
        """The default of a COMBO: the declared one when offered, else the first option."""
        if self.default in options:
            return self.default
        return options[0] if options else None


@dataclass(frozen=True)
class OutputDefinition:
    """One output socket: its type, the name shown on it and a tooltip."""

    kind: str
    name: str
    tooltip: str


@dataclass(frozen=True)
class NodeDefinition:
    """A whole node. ``run(**inputs)`` returns a tuple with one value per output."""

    node_id: str
    display_name: str
    description: str
    inputs: tuple[InputDefinition, ...]
    outputs: tuple[OutputDefinition, ...]
    run: Callable[..., tuple]
    category: str = CATEGORY

    def __post_init__(self):
        if not self.description:
            raise ValueError(f"node {self.node_id!r} needs a description")
        names = [i.name for i in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"node {self.node_id!r} has duplicate input names: {names}")

    def custom_kinds(self) -> set[str]:
        """The pack's own socket types this node uses."""
        kinds = {i.kind for i in self.inputs} | {o.kind for o in self.outputs}
        return {k for k in kinds if k not in (IMAGE, MASK, *WIDGET_KINDS)}
