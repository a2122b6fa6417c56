"""Find the trainable layers of an imported graph, in order from the input.

The sparse-update config speaks of "conv index 23" and "the classifier"; this module maps
those words onto parameter names by reading the normal form that every frontend produces
(see `frontend/imported.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax


@dataclass(frozen=True)
class Layer:
    """A conv or linear layer and its parameters (names as in `ImportedModel.params`)."""

    kind: str              # "conv2d" | "linear"
    weight: str
    bias: str | None
    groups: int = 1
    # Axis of the weight that holds input channels for a sub-tensor update: 1 for dense
    # convs and linear layers (O, I, ...); 0 for depthwise convs, whose only channel axis
    # is the output one (each output channel sees one input channel).
    channel_axis: int = 1


def find_layers(func: relax.Function) -> list[Layer]:
    """Convs and linears in graph order; the last one is the classifier."""
    params = set(func.params[1:])
    bindings = _bindings(func)
    producer = {b.var: b.value for b in bindings}
    layers: list[Layer] = []
    for b in bindings:
        call = b.value
        if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
            continue
        if call.op.name == "relax.nn.conv2d" and call.args[1] in params:
            weight = call.args[1]
            groups = int(call.attrs.groups)
            depthwise = groups > 1 and int(weight.ty.shape[1]) == 1
            bias = _bias_of(b.var, bindings, producer, params)
            layers.append(Layer("conv2d", weight.name, bias, groups, 0 if depthwise else 1))
        elif call.op.name == "relax.matmul":
            rhs = producer.get(call.args[1])
            if (isinstance(rhs, relax.Call) and rhs.op.name == "relax.permute_dims"
                    and rhs.args[0] in params):
                bias = _bias_of(b.var, bindings, producer, params)
                layers.append(Layer("linear", rhs.args[0].name, bias))
    return layers


def _bindings(func: relax.Function) -> list[relax.VarBinding]:
    return [b for block in func.body.blocks for b in block.bindings]


def _bias_of(out, bindings, producer, params) -> str | None:
    """The param added to `out` right after it: `add(out, reshape(b))` or `add(b, out)`."""
    for b in bindings:
        call = b.value
        if not (isinstance(call, relax.Call) and getattr(call.op, "name", "") == "relax.add"):
            continue
        if out not in call.args:
            continue
        other = call.args[1] if call.args[0].same_as(out) else call.args[0]
        if other in params:
            return other.name
        src = producer.get(other)
        if (isinstance(src, relax.Call) and getattr(src.op, "name", "") == "relax.reshape"
                and src.args[0] in params):
            return src.args[0].name
        return None
    return None
