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
        weight = _param_through_cast(call.args[1], producer, params) if call.op.name == "relax.nn.conv2d" else None
        if weight is not None:
            groups = int(call.attrs.groups)
            depthwise = groups > 1 and int(weight.ty.shape[1]) == 1
            bias = _bias_of(b.var, bindings, producer, params)
            layers.append(Layer("conv2d", weight.name, bias, groups, 0 if depthwise else 1))
        elif call.op.name == "relax.matmul":
            rhs = producer.get(call.args[1])
            weight = None
            if isinstance(rhs, relax.Call) and rhs.op.name == "relax.permute_dims":
                weight = _param_through_cast(rhs.args[0], producer, params)
            if weight is not None:
                bias = _bias_of(b.var, bindings, producer, params)
                layers.append(Layer("linear", weight.name, bias))
    return layers


def _param_through_cast(expr, producer, params):
    """`expr` if it is a parameter, or the parameter of `astype(param)` (int8 weights)."""
    if expr in params:
        return expr
    src = producer.get(expr)
    if isinstance(src, relax.Call) and getattr(src.op, "name", "") == "relax.astype" and src.args[0] in params:
        return src.args[0]
    return None


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
        param = bias_operand(call, out, producer, params)
        return param.name if param is not None else None
    return None


def bias_operand(add_call: relax.Call, out: relax.Var, producer: dict, params) -> relax.Var | None:
    """The bias parameter of `add(out, b)` / `add(b, out)`, through a reshape and a cast."""
    other = add_call.args[1] if add_call.args[0].same_as(out) else add_call.args[0]
    param = _param_through_cast(other, producer, params)
    src = producer.get(other)
    if param is None and isinstance(src, relax.Call) and getattr(src.op, "name", "") == "relax.reshape":
        param = _param_through_cast(src.args[0], producer, params)
    return param
