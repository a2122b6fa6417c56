"""FloatTrainableParams: let Relax `Gradient` differentiate integer (quantized) parameters."""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_tinytrain.errors import ConfigError
from tvm_tinytrain.relax_utils import substitute_vars


@tvm.transform.module_pass(opt_level=0, name="FloatTrainableParams")
class FloatTrainableParams:
    """Turn each trainable int8 / int32 parameter of `main_loss` into a float32 one.

    A quantized graph casts its integer parameters where it uses them,
    `w_f = astype(w, "float32")`. `Gradient` refuses integer tensors, so for the parameters
    that train this pass makes the cast's result the parameter itself: the gradient is
    then taken with respect to the integer values, as tiny-training does. `FuseSGDUpdate`
    casts the stored integers at the start of the step and rounds the update back.

    Before::

        def main_loss(x, label, w: R.Tensor((8, 4, 1, 1), "int8")):
            w_f = R.astype(w, "float32")
            y = R.nn.conv2d(x, w_f)

    After::

        def main_loss(x, label, w: R.Tensor((8, 4, 1, 1), "float32")):
            y = R.nn.conv2d(x, w)

    For the names in `masters` the float parameter is a *master copy* that accumulates updates
    smaller than one integer step, and the forward pass uses its rounded value, as
    tiny-training trains (`weight.round()` in its quantized conv, a float parameter in the
    optimizer); gradients pass straight through. The update keeps a master within its
    integer type's range (FuseSGDUpdate), so the forward needs no clip, whose mask would
    keep the weight's gradient from fusing into its update::

            w_q = R.round(w)
            y = R.nn.conv2d(x, w_q)
    """

    def __init__(self, trainable: list[str], masters: set[str] = frozenset(), func_name: str = "main_loss"):
        self.trainable = set(trainable)
        self.masters = set(masters)
        self.func_name = func_name

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        func = mod[self.func_name]
        ints = {p: relax.Var(p.name, relax.TensorType(p.ty.shape, "float32")) for p in func.params
                if p.name in self.trainable and p.ty.dtype != "float32"}
        if not ints:
            return mod
        remap: dict = {}
        kept = []
        for block in func.body.blocks:
            for b in block.bindings:
                v = b.value
                if (isinstance(v, relax.Call) and getattr(v.op, "name", "") == "relax.astype"
                        and v.args[0] in ints and v.attrs.dtype == "float32"):
                    remap[b.var] = (v.args[0], b.var.name)
                else:
                    kept.append(b)
        bb = relax.BlockBuilder()
        params = [ints.get(p, p) for p in func.params]
        with bb.function(self.func_name, params):
            with bb.dataflow():
                for var, (p, name) in list(remap.items()):
                    remap[var] = self._forward_value(bb, ints[p], str(p.ty.dtype), name)
                for b in kept:
                    value = substitute_vars(b.value, remap)
                    if any(p in relax.analysis.free_vars(value) for p in ints):
                        raise ConfigError(f"{self.func_name}: an integer parameter is used other than "
                                          f"through astype(float32): {b.var.name}")
                    if value.same_as(b.value):
                        bb.emit_normalized(b)
                    else:
                        emit = bb.emit if isinstance(b.var, relax.DataflowVar) else bb.emit_output
                        remap[b.var] = emit(value, name_hint=b.var.name)
            bb.emit_func_output(substitute_vars(func.body.body, remap))
        mod = tvm.IRModule(dict(mod.functions))
        mod[self.func_name] = bb.get()[self.func_name]
        return mod

    def _forward_value(self, bb, param, dtype, name):
        """What the forward pass reads: the parameter itself, or its rounded master copy."""
        if param.name not in self.masters:
            return param
        return bb.emit(relax.op.round(param), name_hint=name)
