"""FuseSGDUpdate: one `train_step` that runs forward, backward and an in-place SGD update."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.utils import copy_with_new_vars

from tvm_tinytrain.c_names import c_identifier

from .sgd_kernels import MASTER_SCALE, STEP_COUNTER, momentum_kernel, sgd_update_kernel
from .split_trained_channels import trained_channels


@tvm.transform.module_pass(opt_level=0, name="FuseSGDUpdate")
class FuseSGDUpdate:
    """Turn `main_loss_adjoint` into `train_step`, applying SGD to every gradient in place.

    Each gradient feeds a `call_tir_inplace` kernel that writes the new value into the
    parameter itself (and its momentum buffer, when momentum > 0), so no second copy of a
    weight ever exists. `ratios` (name -> fraction of channels) restricts an update to the
    first channels of the parameter's `channel_axis` (a sub-tensor update). Parameters
    that do not train pass through untouched.

    Before::

        def main_loss_adjoint(x, label, w) -> R.Tuple(loss, R.Tuple(grad_w)): ...

    After (added; momentum buffers `v_*` only with momentum)::

        def train_step(x, label, w, v_w) -> R.Tuple(loss, w_new, v_w_new):
            with R.dataflow():
                ...                                  # forward and backward, as in the adjoint
                v_w_new = R.call_tir_inplace(cls.momentum_w, (v_w, grad_w), inplace_indices=[0], ...)
                w_new = R.call_tir_inplace(cls.sgd_w, (w, v_w_new), inplace_indices=[0], ...)
                R.output(...)
            return (loss, w_new, v_w_new)

    The returned parameters alias the inputs: callers see the update in the tensors they
    passed (Relax VM) or in the weight arrays (generated C).

    `storage` names the parameters kept as integers (int8 weights, int32 biases of a
    quantized graph, made float for `Gradient` by FloatTrainableParams): `train_step` takes
    them as stored, casts them to float32 for the step, and rounds the update back,
    saturating. An int16 master of an int8 weight (`MASTER_SCALE`) is read as `p / 256`;
    `masters` (name -> integer type) are master copies, kept within their type's range.
    `rounding="stochastic"` rounds those updates stochastically: `train_step` then takes a
    last parameter, `rounding_step` (uint32[1], the count of steps taken before), which the
    caller advances after each step.
    """

    def __init__(self, trainable: list[str], lr: float, momentum: float = 0.0,
                 ratios: dict[str, float] | None = None, channel_axis: dict[str, int] | None = None,
                 storage: dict[str, str] | None = None, rounding: str = "nearest",
                 masters: dict[str, str] | None = None,
                 func_name: str = "main_loss_adjoint", new_name: str = "train_step"):
        self.trainable = list(trainable)
        self.storage = storage or {}
        self.masters = masters or {}  # master copy -> the integer type it stands for
        self.rounding = rounding
        self.lr, self.momentum = float(lr), float(momentum)
        self.ratios = ratios or {}
        self.channel_axis = channel_axis or {}
        self.func_name, self.new_name = func_name, new_name

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        adjoint = copy_with_new_vars(mod[self.func_name])  # a var belongs to one function
        block = adjoint.body.blocks[0]
        by_name = {p.name: p for p in adjoint.params}
        grad_types = adjoint.ret_ty.fields[1].fields  # gradients may be narrowed (sub-tensor)
        velocities = [relax.Var(f"momentum.{n}", t) for n, t in zip(self.trainable, grad_types)] \
            if self.momentum else []
        stored = {p.name: relax.Var(p.name, relax.TensorType(p.ty.shape, self.storage[p.name]))
                  for p in adjoint.params if self.storage.get(p.name, p.ty.dtype) != p.ty.dtype}
        params = [stored.get(p.name, p) for p in adjoint.params]
        stochastic = self.rounding == "stochastic" and bool(stored)
        counter = relax.Var(STEP_COUNTER, relax.TensorType((1,), "uint32")) if stochastic else None
        bb = relax.BlockBuilder(mod)
        with bb.function(self.new_name, [*params, *velocities, *([counter] if stochastic else [])]):
            with bb.dataflow():
                for name, var in stored.items():  # the adjoint's float view of the stored integers
                    bb.emit_normalized(relax.VarBinding(by_name[name], bb.normalize(float_view(var))))
                for binding in block.bindings:
                    bb.emit_normalized(binding)
                out = adjoint.body.body
                loss = bb.emit(relax.TupleGetItem(out, 0))
                grads = bb.emit(relax.TupleGetItem(out, 1))
                new_params, new_velocities = [], []
                for i, name in enumerate(self.trainable):
                    p = stored.get(name, by_name[name])
                    g = bb.emit(relax.TupleGetItem(grads, i))
                    new_p, new_v = self._update(bb, i, name, p, g, velocities[i] if velocities else None, counter)
                    new_params.append(new_p)
                    if new_v is not None:
                        new_velocities.append(new_v)
                result = bb.emit_output(relax.Tuple([loss, *new_params, *new_velocities]))
            bb.emit_func_output(result)
        return bb.get()

    def _update(self, bb, index, name, p, g, v, counter):
        shape = tuple(int(d) for d in p.ty.shape)
        grad_shape = tuple(int(d) for d in g.ty.shape)
        axis = self.channel_axis.get(name, 1)
        ratio = self.ratios.get(name, 1.0)
        k = None
        if len(shape) > 1 and ratio < 1.0:
            k = trained_channels(shape[axis], ratio)
        stochastic = counter is not None and str(p.ty.dtype) != "float32"
        update = bb.add_func(sgd_update_kernel(shape, grad_shape, self.lr, axis, k, p.ty.dtype,
                                               "stochastic" if stochastic else "nearest", salt=index,
                                               master_of=self.masters.get(name, "")),
                             "sgd_" + c_identifier(name))
        counter = [counter] if stochastic else []
        if v is None:
            return bb.emit(relax.op.call_tir_inplace(update, [p, g, *counter], [0], p.ty)), None
        accumulate = bb.add_func(momentum_kernel(grad_shape, self.momentum, axis, k),
                                 "momentum_" + c_identifier(name))
        new_v = bb.emit(relax.op.call_tir_inplace(accumulate, [v, g], [0], v.ty))
        return bb.emit(relax.op.call_tir_inplace(update, [p, new_v, *counter], [0], p.ty)), new_v


def stored_params(func: relax.Function, storage: dict[str, str]) -> relax.Function:
    """`func` taking the parameters named in `storage` as stored (name -> dtype), reading
    their `float_view` where it read the float parameter (`main` with int16 masters)."""
    func = copy_with_new_vars(func)
    stored = {p: relax.Var(p.name, relax.TensorType(p.ty.shape, storage[p.name]))
              for p in func.params if p.name in storage}
    views = [relax.VarBinding(p, float_view(var)) for p, var in stored.items()]
    first, *rest = func.body.blocks
    body = relax.SeqExpr([relax.DataflowBlock(views + list(first.bindings)), *rest], func.body.body)
    new = relax.Function([stored.get(p, p) for p in func.params], body, func.ret_ty, func.is_pure,
                         func.attrs)
    return relax.transform.Normalize()(tvm.IRModule({"f": new}))["f"]


def float_view(stored: relax.Expr) -> relax.Expr:
    """The float32 value a stored integer parameter stands for: its value, or for an int16
    master copy of an int8 weight, its value / 256 (exact in float32)."""
    dtype = str(stored.ty.dtype)
    value = relax.op.astype(stored, "float32")
    if dtype in MASTER_SCALE:
        value = relax.op.multiply(value, relax.const(1.0 / MASTER_SCALE[dtype], "float32"))
    return value
