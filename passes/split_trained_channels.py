"""SplitTrainedChannels: only the channels that train are kept in RAM.

A sub-tensor update (the paper's weight update ratio) trains the first `k` channels of a
weight along its channel axis, but the parameter is one tensor, so all of it would sit in
RAM. This pass splits each such parameter `W` into `W` (the `k` trained channels: RAM,
updated in place) and `W.frozen` (the others: flash), and gives every reader
`concat([W, W.frozen], axis)`, which `FuseKernels` folds into the reading kernel. The SGD
update then covers the whole (smaller) `W`. The values read are the same: nothing changes.

Before::

    def train_step(x, label, w: R.Tensor((O, I, 1, 1), "int8"), ...):
        y = conv2d(..., R.astype(w, "float32"))
        upd = R.call_tir_inplace(sgd_w, (w, grad_w), ...)    # updates channels [0, k)

After::

    def train_step(x, label, w: R.Tensor((O, k, 1, 1), "int8"), w_frozen: R.Tensor((O, I - k, 1, 1), "int8"), ...):
        y = conv2d(..., R.astype(R.concat([w, w_frozen], axis=1), "float32"))
        upd = R.call_tir_inplace(sgd_w, (w, grad_w), ...)    # updates all of w
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_tinytrain.relax_utils import function_attrs, op_name, substitute_vars

from .sgd_kernels import UPDATE_ATTR, sgd_update_kernel

FROZEN_SUFFIX = ".frozen"


def trained_channels(shape, ratio: float) -> int:
    """How many channels a sub-tensor update trains (FuseSGDUpdate's rule)."""
    return max(1, int(round(shape * ratio)))


def split_values(value: np.ndarray, axis: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(np.take(value, range(k), axis)), \
        np.ascontiguousarray(np.take(value, range(k, value.shape[axis]), axis))


@tvm.transform.module_pass(opt_level=0, name="SplitTrainedChannels")
class SplitTrainedChannels:
    """`split`: parameter name -> (channel axis, trained channels k)."""

    def __init__(self, split: dict[str, tuple[int, int]], lr: float):
        self.split, self.lr = dict(split), float(lr)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if not self.split:
            return mod
        bb = relax.BlockBuilder(mod)
        new = {}
        for name in ("train_step", "main"):
            new[name] = self._rewrite(bb, mod[name])
        out = bb.get()
        for name, func in new.items():
            out[out.get_global_var(name)] = func
        return out

    def _rewrite(self, bb, func: relax.Function) -> relax.Function:
        params, pieces = [], {}
        for p in func.params:
            if p.name not in self.split:
                params.append(p)
                continue
            axis, k = self.split[p.name]
            shape = [int(d) for d in p.ty.shape]
            trained, frozen = list(shape), list(shape)
            trained[axis], frozen[axis] = k, shape[axis] - k
            t = relax.Var(p.name, relax.TensorType(trained, p.ty.dtype))
            f = relax.Var(p.name + FROZEN_SUFFIX, relax.TensorType(frozen, p.ty.dtype))
            pieces[p] = (t, f, axis)
            params += [t, f]
        inner = relax.BlockBuilder()  # the function, built apart; kernels go to the module
        with inner.function(func.attrs["global_symbol"], params, attrs=function_attrs(func), private=False):
            with inner.dataflow():
                for b in func.body.blocks[0].bindings:
                    value = b.value
                    update = op_name(value) == "relax.call_tir_inplace"
                    args = list(value.args[1].fields) if update else []
                    if update and args[0] in pieces:
                        value = self._update(bb, pieces[args[0]][0], pieces[args[0]][2], args, value)
                    else:
                        mapping = {v: inner.emit(relax.op.concat([pieces[v][0], pieces[v][1]], pieces[v][2]),
                                                 f"{v.name}_whole")
                                   for v in relax.analysis.free_vars(value) if v in pieces}
                        value = substitute_vars(value, mapping) if mapping else value
                    inner.emit_normalized(relax.VarBinding(b.var, inner.normalize(value)))
            inner.emit_func_output(func.body.body)
        return inner.get()[func.attrs["global_symbol"]]

    def _update(self, bb, trained, axis, args, old):
        """The update of all of `trained`, from the first channels of the gradient (which
        may be whole: float master copies are masked before it is narrowed)."""
        g, counter = args[1], args[2:]  # (stochastic rounding: the step counter)
        shape = tuple(int(d) for d in trained.ty.shape)
        kind = bb.get()[old.args[0]].attrs[UPDATE_ATTR]
        kernel = sgd_update_kernel(shape, tuple(int(d) for d in g.ty.shape), self.lr, axis, shape[axis],
                                   trained.ty.dtype, "stochastic" if counter else "nearest", int(kind["salt"]),
                                   str(kind["master_of"]))
        gv = bb.add_func(kernel, old.args[0].name_hint + "_trained")
        return relax.op.call_tir_inplace(gv, [trained, g, *counter], [0], trained.ty)

