"""FuseKernels: one kernel per conv (or matmul, or reduction) with its prologue and epilogue.

Legalized Relax runs every elementwise op as its own kernel over whole tensors: an int8
conv reads a float32 copy of its int8 input (cast, then minus the zero point), pads it into
a workspace, and writes a float32 accumulator that four more kernels rescale, round and
saturate. At 64x64 resolution each of those float32 tensors is 4x the int8 activation,
and they, not the model, set the peak.

This pass groups kernels (on the legalized module, before `FuseTIR`):

- an injective producer whose only use is one kernel is fused into it (casts, zero-point
  subtraction, padding, reshapes feed a conv without being materialised);
- a reduction (conv, matmul, sum) whose only use is an elementwise or injective kernel
  no larger than it is fused with it (the requantization epilogue, a gradient's mask);

at most one reduction per group, never across an in-place update of an input, never from
the forward into the backward pass (what the backward reads is what the forward stored),
and never across a widening cast: an int8 (or bool) tensor read as float32 stays the
tensor kept between kernels. TVM's
`FuseTIR` merges each group into one PrimFunc, then `shrink_intermediates` schedules it
so that no intermediate tensor remains: injective blocks are inlined into their readers
and the reduction is computed at its consumer's innermost loop (one accumulator).
Neither transformation changes an arithmetic operation or the order of a reduction, so
the numbers are bit-identical; only the memory of the intermediates goes away.

TVM's own `FuseOps` only fuses epilogues: it leaves casts and padding in front of a conv
as separate kernels, which is exactly the memory we need to remove.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.s_tir import Schedule, ScheduleError

from tvm_tinytrain.relax_utils import backward_start, op_name

INJECTIVE = 2       # op_pattern kinds (AnnotateTIROpPattern): elemwise 0, broadcast 1, injective 2,
REDUCTIONS = (3, 4)  # comm-reduce 3, out-elemwise-fusable 4 (conv, matmul), opaque 8


@tvm.transform.module_pass(opt_level=0, name="FuseKernels")
class FuseKernels:
    """Group a legalized module's kernels (see module docstring) and fuse them with FuseTIR."""

    def __init__(self, func_names=("main", "train_step")):
        self.func_names = tuple(func_names)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod = relax.transform.CanonicalizeBindings()(mod)  # no `a = b` aliases between kernels
        mod = relax.transform.AnnotateTIROpPattern()(mod)
        bb = relax.BlockBuilder(mod)
        for name in self.func_names:
            if name in [gv.name_hint for gv in mod.get_global_vars()]:
                _group_function(bb, mod, name)
        mod = relax.transform.FuseTIR()(_replace_originals(bb.get(), self.func_names))
        prims = {gv: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
        for gv, func in prims.items():  # fused or not: padding inside a kernel is a copy too
            mod[gv] = shrink_intermediates(func)
        return relax.transform.DeadCodeElimination(list(self.func_names))(mod)


def _replace_originals(mod: tvm.IRModule, names) -> tvm.IRModule:
    """The builder added each regrouped function beside its original (as main1...): swap in."""
    new = {f.attrs["global_symbol"]: f for gv, f in mod.functions.items()
           if isinstance(f, relax.Function) and f.attrs and f.attrs.get("global_symbol") in names
           and gv.name_hint != f.attrs["global_symbol"]}
    out = tvm.IRModule()
    for gv, f in mod.functions.items():
        symbol = f.attrs.get("global_symbol") if f.attrs else None
        if symbol in new and gv.name_hint != symbol:
            continue
        out[gv] = new.get(gv.name_hint, f) if isinstance(f, relax.Function) else f
    return out


def _itemsize(var) -> int:
    dtype = getattr(var.ty, "dtype", None)
    return tvm.runtime.DataType(str(dtype)).bits if dtype is not None else 0


def _elements(binding) -> int:
    """Elements of a binding's tensor: an epilogue must not read one result twice."""
    shape = getattr(binding.var.ty, "shape", None)
    return int(np.prod([int(d) for d in shape])) if shape is not None else 1 << 62


def _widens(producer, consumer) -> bool:
    """A cast to a wider type (int8 -> float32): the narrow tensor is the one to keep."""
    return _itemsize(producer.var) < _itemsize(consumer.var)


def _prim(mod, binding):
    return mod[binding.value.args[0]] if op_name(binding.value) == "relax.call_tir" else None


def _group_function(bb: relax.BlockBuilder, mod: tvm.IRModule, name: str) -> None:
    func = mod[name]
    if len(func.body.blocks) != 1:
        return
    bindings = list(func.body.blocks[0].bindings)
    index = {b.var: i for i, b in enumerate(bindings)}
    uses: dict = {}
    for i, b in enumerate(bindings):
        for v in relax.analysis.free_vars(b.value):
            uses.setdefault(v, []).append(i)
    for v in relax.analysis.free_vars(func.body.body):
        uses.setdefault(v, []).append(len(bindings))
    inplace_writes = {}  # binding index -> vars it mutates
    for i, b in enumerate(bindings):
        if op_name(b.value) == "relax.call_tir_inplace":
            args = b.value.args[1].fields
            inplace_writes[i] = {args[k] for k in b.value.attrs.inplace_indices}

    start = backward_start(func, bindings)
    parent = list(range(len(bindings)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    reductions = {}
    patterns = {}
    for i, b in enumerate(bindings):
        prim = _prim(mod, b)
        if prim is not None:
            patterns[i] = int(prim.attrs["op_pattern"])
            reductions[i] = int(patterns[i] in REDUCTIONS)
    for i, b in enumerate(bindings):
        if i not in patterns or patterns[i] > REDUCTIONS[-1]:
            continue
        for arg in b.value.args[1].fields:
            j = index.get(arg)
            if j is None or j not in patterns or uses.get(arg) != [i]:
                continue
            pj, gi, gj = patterns[j], find(i), find(j)
            if gi == gj or reductions[gi] + reductions[gj] > 1 or (j < start <= i):
                continue
            prologue = pj <= INJECTIVE and not reductions[gj]
            epilogue = (patterns[i] <= INJECTIVE and not reductions[gi] and not _widens(bindings[j], b)
                        and _elements(b) <= _elements(bindings[j]))
            if not (prologue or epilogue):
                continue
            inputs = relax.analysis.free_vars(bindings[j].value)
            if any(w & set(inputs) for k, w in inplace_writes.items() if j < k < i):
                continue
            parent[gj] = gi
            reductions[gi] += reductions[gj]

    groups: dict[int, list[int]] = {}
    for i in patterns:
        groups.setdefault(find(i), []).append(i)
    sink_of = {}
    for members in groups.values():
        if len(members) > 1:
            sink_of[max(members)] = sorted(members)
    grouped = {i for members in sink_of.values() for i in members}

    attrs = {str(k): v for k, v in func.attrs.items()} if func.attrs else {}
    with bb.function(name, list(func.params), attrs=attrs, private=False):
        with bb.dataflow():
            for i, b in enumerate(bindings):
                if i in sink_of:
                    gv, args = _primitive_function(bb, [bindings[k] for k in sink_of[i]])
                    call = relax.Call(gv, args)
                    bb.emit_normalized(relax.VarBinding(b.var, bb.normalize(call)))
                elif i not in grouped:
                    bb.emit_normalized(b)
        bb.emit_func_output(func.body.body)


def _primitive_function(bb, members):
    """A `Primitive` Relax function holding `members` (in order); returns (gv, outer args)."""
    defined = {b.var for b in members}
    args, params, subst = [], [], {}
    new_bindings = []
    for k, b in enumerate(members):
        fields = []
        for a in b.value.args[1].fields:
            if isinstance(a, relax.Var) and a in subst:
                fields.append(subst[a])
            elif isinstance(a, relax.Var) and a in defined:
                raise AssertionError("internal: a group member used before its definition")
            else:  # an input of the group: a variable from outside, or a constant
                p = relax.Var(f"p{len(params)}", a.ty)
                if isinstance(a, relax.Var):
                    subst[a] = p
                params.append(p)
                args.append(a)
                fields.append(p)
        value = relax.Call(b.value.op, [b.value.args[0], relax.Tuple(fields), *b.value.args[2:]],
                           b.value.attrs, b.value.ty_args)
        last = k == len(members) - 1
        var = (relax.Var if last else relax.DataflowVar)(b.var.name, b.var.ty)
        subst[b.var] = var
        new_bindings.append(relax.VarBinding(var, value))
    body = relax.SeqExpr([relax.DataflowBlock(new_bindings)], new_bindings[-1].var)
    fn = relax.Function(params, body, members[-1].var.ty).with_attr("Primitive", True)
    name = "fused_" + "_".join(b.value.args[0].name_hint for b in members)[:60]
    return bb.add_func(fn, name), args


def shrink_intermediates(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """Schedule a fused kernel so that its intermediate tensors vanish (see module doc)."""
    if int(func.attrs.get("op_pattern", 0)) > REDUCTIONS[-1]:
        return func  # opaque (our SGD kernels): nothing to schedule
    sch = Schedule(func)
    root = sch.get_sblock("root")
    changed = True
    while changed:  # inline every injective block into its readers (and epilogues into the last)
        changed = False
        for block in sch.get_child_blocks(root)[:-1]:
            try:
                sch.compute_inline(block)
                changed = True
                break
            except ScheduleError:
                continue
    for block in sch.get_child_blocks(root)[:-1]:  # a reduction feeding an epilogue
        consumers = sch.get_consumers(block)
        if len(consumers) == 1:
            outer = sch.get_loops(consumers[0])
            try:
                sch.compute_at(block, outer[-1], preserve_unit_loops=True)
                # the accumulator's zeroing before its loop nest, not inside it (clearer C,
                # and gcc can see the accumulator is initialised)
                sch.decompose_reduction(block, sch.get_loops(block)[len(outer)])
            except ScheduleError:
                pass
    result = sch.mod["main"]
    if func.attrs is None or "global_symbol" not in func.attrs:  # Schedule names it "main"
        result = result.without_attr("global_symbol")
    return result
