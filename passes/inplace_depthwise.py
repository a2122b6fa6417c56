"""InplaceDepthwise: a depthwise kernel writes its result over its input, one channel at a time.

The backward pass of a depthwise conv (stride 1) turns its output gradient into an input
gradient of the same shape; in MobileNet-style networks both are float32 and the widest
tensors of the backward pass, and both are alive while the kernel runs. Output channel c
reads input channel c only, so the kernel can copy channel c of its input into a one-plane
buffer and then write channel c of its result where that input was:

    for c:                                     # the result's channel loop
        plane[:, :] = dy[c, :, :]              # TIR cache_read, computed at the channel loop
        dy[c, h, w] = sum(plane[...] * w[c])   # the result's buffer is dy's (specialize)

The pass rewrites, on the final (fused, scheduled, reordered) module, each
`call_tir(kernel, (..., dy, ...))` where

- `dy` is computed in the step (never a parameter or the sample), has the result's shape
  and type, and every other reader of `dy` runs earlier (so the order matters: it runs
  after ReorderForMemory);
- the kernel reads `dy` in one block, and the schedule above can stage it in a buffer of
  one channel (which proves output channel c reads input channel c only),

into `call_tir_inplace(kernel_inplace, (..., dy, ...), inplace_indices=[k])`: the lowering
then gives the result `dy`'s storage. The arithmetic is unchanged (same reduction, same
order), so the numbers are bit-identical.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.s_tir import Schedule, ScheduleError

from tvm_tinytrain.relax_utils import op_name, readers

from .fuse_kernels import CHANNEL_AXIS, scheduled


@tvm.transform.module_pass(opt_level=0, name="InplaceDepthwise")
class InplaceDepthwise:
    def __init__(self, func_names=("train_step", "main")):
        self.func_names = tuple(func_names)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        bb = relax.BlockBuilder(mod)  # adds the in-place kernels, typed
        kernels: dict = {}  # (kernel, argument index) -> in-place kernel's GlobalVar, or None
        rewritten = {name: _rewrite(bb, mod, mod[name], kernels) for name in self.func_names
                     if name in [gv.name_hint for gv in mod.get_global_vars()]}
        out = bb.get()
        for name, func in rewritten.items():
            out[name] = func
        return out


def _rewrite(bb: relax.BlockBuilder, mod: tvm.IRModule, func: relax.Function, kernels: dict) -> relax.Function:
    if len(func.body.blocks) != 1:
        return func
    bindings = list(func.body.blocks[0].bindings)
    defined = {b.var: i for i, b in enumerate(bindings)}
    reads = readers(bindings)
    escaping = set(relax.analysis.free_vars(func.body.body))
    new = []
    for i, b in enumerate(bindings):
        value = b.value
        if op_name(value) == "relax.call_tir" and isinstance(b.var.ty, relax.TensorType):
            args = list(value.args[1].fields)
            for k, arg in enumerate(args):
                if (arg not in defined or arg in escaping or max(reads[arg]) != i or reads[arg].count(i) != 1
                        or not _same_type(arg.ty, b.var.ty)):
                    continue
                gv = _inplace_kernel(bb, mod, value.args[0], k, kernels)
                if gv is not None:
                    value = bb.normalize(relax.op.call_tir_inplace(gv, args, [k], b.var.ty))
                    break
        new.append(relax.VarBinding(b.var, value) if value is not b.value else b)
    return relax.Function(func.params, relax.SeqExpr([relax.DataflowBlock(new)], func.body.body),
                          func.ret_ty, func.is_pure, func.attrs)


def _same_type(a, b) -> bool:
    return (isinstance(a, relax.TensorType) and str(a.dtype) == str(b.dtype)
            and [int(d) for d in a.shape] == [int(d) for d in b.shape])


def _inplace_kernel(bb: relax.BlockBuilder, mod: tvm.IRModule, gv, k: int, kernels: dict):
    if (gv, k) not in kernels:
        func = channelwise_inplace(mod[gv], k)
        kernels[(gv, k)] = None if func is None else bb.add_func(func, gv.name_hint + "_inplace")
    return kernels[(gv, k)]


def channelwise_inplace(func: tvm.tirx.PrimFunc, k: int) -> tvm.tirx.PrimFunc | None:
    """`func` (inputs..., out) rewritten to write `out` over its input `k`, staging that
    input one channel at a time; None if that is not provably safe (see module doc)."""
    data, out = func.params[k], func.params[-1]
    if len(out.ty.shape) <= CHANNEL_AXIS:
        return None
    sch = Schedule(func)
    try:
        root = sch.get_sblock("root")
    except ScheduleError:
        return None  # not a block-based kernel
    last = sch.get_child_blocks(root)[-1]
    loops = sch.get_loops(last)
    writes = sch.get(last).writes
    out_shape = [int(d) for d in out.ty.shape]
    if (len(writes) != 1 or not writes[0].source.same_as(out) or len(loops) != len(out_shape)
            or [int(sch.get(loop).extent) for loop in loops] != out_shape):
        return None  # the last block must write each element of `out` once, in its loop order
    reading = [(b, j) for b in _all_blocks(sch, root) for j, r in enumerate(sch.get(b).reads)
               if r.source.same_as(data)]
    if len(reading) != 1:
        return None
    try:
        plane = sch.cache_read(*reading[0], "global")
        sch.compute_at(plane, loops[CHANNEL_AXIS], preserve_unit_loops=True)
    except ScheduleError:
        return None
    copy_loops = sch.get_loops(plane)[CHANNEL_AXIS + 1:]  # one loop per dimension of the copy
    if len(copy_loops) != len(out_shape) or int(sch.get(copy_loops[CHANNEL_AXIS]).extent) != 1:
        return None  # the kernel reads more than one input channel per output channel
    return scheduled(sch, func).specialize({out: data})


def _all_blocks(sch, block) -> list:
    found = []
    for child in sch.get_child_blocks(block):
        found += [child, *_all_blocks(sch, child)]
    return found
