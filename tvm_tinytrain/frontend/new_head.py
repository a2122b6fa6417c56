"""A new classifier for a float model: `--num-classes` on a PyTorch or ONNX model.

The frontends' normal form ends a classifier with a linear layer, `add(matmul(x,
permute_dims(W, [1, 0])), b)` (either operand order, the bias optional), whose result, maybe
through plain aliases, is the function's output. `with_new_head` gives that layer
`num_classes` outputs: W and b keep their names and are drawn afresh (W uniform in
+-1/sqrt(features), as torch initialises a Linear, seeded; b zero), and every value after
them takes its new shape from Relax's own shape inference.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import relax

from ..errors import TinyTrainError
from ..relax_utils import op_name, substitute_vars
from .imported import ImportedModel

MAX_CLASSES = 4096  # a head this wide is no MCU classifier, and bounds what a flag can allocate


def with_new_head(model: ImportedModel, num_classes: int, seed: int = 0) -> ImportedModel:
    """`model` with its final linear layer replaced by a new one of `num_classes` outputs."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise TinyTrainError(f"--num-classes must be in [2, {MAX_CLASSES}], got {num_classes}")
    if model.is_quantized:
        raise TinyTrainError(f"{model.source}: a new head for an int8 model comes from its own frontend "
                             "(tiny-training .pkl models take --num-classes); quantize after replacing it")
    func = model.mod["main"]
    weight, bias = _final_linear(func, model.source)
    features = int(weight.ty.shape[1])
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(features)
    new_values = {weight.name: rng.uniform(-bound, bound, (num_classes, features)).astype(np.float32)}
    if bias is not None:
        new_values[bias.name] = np.zeros(num_classes, np.float32)
    remap = {old: relax.Var(old.name, relax.TensorType(new_values[old.name].shape, "float32"))
             for old in (weight, bias) if old is not None}
    new_func = _rebuilt(func, remap)
    mod = tvm.IRModule(dict(model.mod.functions))
    mod["main"] = new_func
    got = tuple(int(d) for d in new_func.ret_ty.shape)
    if got != (1, num_classes):
        raise TinyTrainError(f"{model.source}: after the new head the model returns shape {got}, not "
                             f"(1, {num_classes}): its logits are reshaped after the classifier")
    values = {name: new_values.get(name, value) for name, value in model.params.items()}
    return dataclasses.replace(model, mod=mod, params=values, source=f"{model.source} (new {num_classes}-class head)")


def _rebuilt(func: relax.Function, remap: dict) -> relax.Function:
    """`func` with the parameters in `remap` replaced, every binding emitted again so that
    Relax infers the shapes that follow from the new ones."""
    env = dict(remap)
    bb = relax.BlockBuilder()
    attrs = {k: v for k, v in func.attrs.items()} if func.attrs is not None else None
    with bb.function("main", [env.get(p, p) for p in func.params], attrs=attrs, pure=func.is_pure):
        with bb.dataflow():
            for block in func.body.blocks:
                for binding in block.bindings:
                    value = substitute_vars(binding.value, env)
                    dataflow = isinstance(binding.var, relax.DataflowVar)
                    env[binding.var] = bb.emit(value, binding.var.name) if dataflow else bb.emit_output(value)
        bb.emit_func_output(substitute_vars(func.body.body, env))
    return bb.get()["main"]


def _final_linear(func: relax.Function, source: str) -> tuple[relax.Var, relax.Var | None]:
    """The weight and bias parameters of the linear layer that computes the output."""
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    params = set(func.params)

    def through_aliases(expr):
        while isinstance(expr, relax.Var) and isinstance(bindings.get(expr), relax.Var):
            expr = bindings[expr]
        return bindings.get(expr, expr) if isinstance(expr, relax.Var) else expr

    out = through_aliases(func.body.body)
    bias = None
    if op_name(out) == "relax.add":
        a, b = out.args
        bias, out = (a, through_aliases(b)) if a in params else (b, through_aliases(a)) if b in params else (None, out)
    if op_name(out) == "relax.matmul":
        w = through_aliases(out.args[1])
        if op_name(w) == "relax.permute_dims" and w.args[0] in params and [int(x) for x in w.attrs.axes] == [1, 0]:
            return w.args[0], bias
    raise TinyTrainError(f"{source}: --num-classes replaces a final linear layer (nn.Linear, ONNX Gemm) whose "
                         "output is the model's, and this model's logits come from something else; build "
                         "the new head in the model itself (a factory argument, e.g. --factory-args num_classes=10)")
