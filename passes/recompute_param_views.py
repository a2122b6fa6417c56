"""RecomputeParamViews: a master copy's rounded value computed where it is read, not kept."""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_tinytrain.relax_utils import function_attrs, op_name, substitute_vars

VIEW_OPS = ("relax.astype", "relax.multiply", "relax.round", "relax.concat")


@tvm.transform.module_pass(opt_level=0, name="RecomputeParamViews")
class RecomputeParamViews:
    """Give every reader of a *parameter view* its own copy of it.

    A view is a value computed from parameters and constants alone by elementwise ops and
    the concat of a split weight (`VIEW_OPS`): the forward's weight from a master copy, `round(astype(w) / 256)` for an
    int16 master, `round(w)` for a float32 one. The forward conv reads it and so does the
    backward conv computing the input gradient; computed once, it is a float32 copy of the
    weight kept alive from the start of the step to the backward pass (4x the int8 weight).
    Copied next to each reader, FuseKernels makes it each kernel's prologue, as the cast of
    an int8 weight is. Changes where a value is computed, never the value.

    Before::

        w_f = R.round(R.multiply(R.astype(w, "float32"), 1/256))
        y = R.nn.conv2d(x, w_f)
        ...                                   # the rest of the forward, the loss
        dx = R.nn.conv2d_transpose(dy, w_f)

    After::

        w_f = R.round(R.multiply(R.astype(w, "float32"), 1/256))
        y = R.nn.conv2d(x, w_f)
        ...
        w_f1 = R.round(R.multiply(R.astype(w, "float32"), 1/256))
        dx = R.nn.conv2d_transpose(dy, w_f1)
    """

    def __init__(self, func_names=("train_step", "main")):
        self.func_names = func_names

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod = tvm.IRModule(dict(mod.functions))
        for name in self.func_names:
            if name in [gv.name_hint for gv in mod.functions]:
                mod[name] = _recompute(mod[name])
        return mod


def _recompute(func: relax.Function) -> relax.Function:
    blocks = func.body.blocks
    if len(blocks) != 1 or not isinstance(blocks[0], relax.DataflowBlock):
        return func
    bindings = list(blocks[0].bindings)
    views: dict = {}  # var -> its value, for view bindings
    params = set(func.params)
    returned = set(relax.analysis.free_vars(func.body.body))
    for b in bindings:
        v = b.value
        if (b.var not in returned and op_name(v) in VIEW_OPS
                and all(a in params or a in views for a in relax.analysis.free_vars(v))):
            views[b.var] = v
    if not views:
        return func
    bb = relax.BlockBuilder()
    with bb.function(func.attrs["global_symbol"], func.params, attrs=function_attrs(func), private=False):
        with bb.dataflow():
            for b in bindings:
                if b.var in views:
                    continue  # emitted where read
                needed = [v for v in relax.analysis.free_vars(b.value) if v in views]
                value = substitute_vars(b.value, _emit_views(bb, needed, views)) if needed else b.value
                bb.emit_normalized(relax.VarBinding(b.var, bb.normalize(value)))
        bb.emit_func_output(func.body.body)
    return bb.get()[func.attrs["global_symbol"]]


def _emit_views(bb, needed, views) -> dict:
    """Fresh copies of the views `needed` (and the views they read): old var -> new var."""
    fresh: dict = {}

    def emit(var):
        if var not in fresh:
            inner = [a for a in relax.analysis.free_vars(views[var]) if a in views]
            for a in inner:
                emit(a)
            fresh[var] = bb.emit(substitute_vars(views[var], fresh) if inner else views[var], name_hint=var.name)
        return fresh[var]

    for var in needed:
        emit(var)
    return fresh
