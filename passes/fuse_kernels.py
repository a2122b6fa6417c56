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
- `updates`: a weight or bias gradient whose only use is its in-place SGD (or momentum)
  update is fused with it: each gradient element is applied as soon as it is summed, and
  the gradient tensor never exists (the paper's "apply the update at once", one element
  at a time);
- `depthwise`: a forward kernel whose result only a depthwise conv reads is fused into
  that conv, which then computes its input one channel at a time (the expansion of
  an inverted-residual block, the widest tensor of the forward pass, becomes one plane);

- a table lookup (`take`, TabulateInt8Functions) is injective, but its int8 result is
  stored, not fused into its reader: a conv would look each element up at every read;

at most one reduction per group (two for a depthwise pair), at most `MAX_GROUP_OPS` ops,
never across an in-place
update of an input, never from the forward into the backward pass (what the backward
reads is what the forward stored), and never across a widening cast: an int8 (or bool)
tensor read as float32 stays the tensor kept between kernels. TVM's `FuseTIR` merges each
group into one PrimFunc, then `shrink_intermediates` schedules it so that no intermediate
tensor remains: injective blocks are inlined into their readers and the reduction is
computed at its consumer's innermost loop (one accumulator). Neither transformation
changes an arithmetic operation or the order of a reduction, so the numbers are
bit-identical; only the memory of the intermediates goes away.

TVM's own `FuseOps` only fuses epilogues: it leaves casts and padding in front of a conv
as separate kernels, which is exactly the memory we need to remove.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.s_tir import Schedule, ScheduleError

from tvm_tinytrain.relax_utils import backward_start, op_name, readers

# Ops one kernel may hold. Scheduling a fused kernel costs time quadratic in its ops (each
# compute_inline walks the whole kernel), so a model with a long chain of elementwise ops
# (a hostile file: 4,000 ReLUs) would take hours to compile; the zoo models need at most 27.
MAX_GROUP_OPS = 64
INJECTIVE = 2       # op_pattern kinds (AnnotateTIROpPattern): elemwise 0, broadcast 1, injective 2,
REDUCTIONS = (3, 4)  # comm-reduce 3, out-elemwise-fusable 4 (conv, matmul), opaque 8
GATHER = "tinytrain.gather"


@tvm.transform.module_pass(opt_level=0, name="FuseKernels")
class FuseKernels:
    """Group a legalized module's kernels (see module docstring) and fuse them with FuseTIR."""

    def __init__(self, func_names=("main", "train_step"), updates: bool = True, depthwise: bool = True):
        self.func_names = tuple(func_names)
        self.updates, self.depthwise = updates, depthwise

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod = relax.transform.CanonicalizeBindings()(mod)  # no `a = b` aliases between kernels
        mod = _gathers_as_injective(relax.transform.AnnotateTIROpPattern()(mod))
        bb = relax.BlockBuilder(mod)
        for name in self.func_names:
            if name in [gv.name_hint for gv in mod.get_global_vars()]:
                _group_function(bb, mod, name, self.updates, self.depthwise)
        mod = relax.transform.FuseTIR()(_replace_originals(bb.get(), self.func_names))
        prims = {gv: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
        for gv, func in prims.items():  # fused or not: padding inside a kernel is a copy too
            mod[gv] = shrink_intermediates(func)
        return relax.transform.DeadCodeElimination(list(self.func_names))(mod)


def _gathers_as_injective(mod: tvm.IRModule) -> tvm.IRModule:
    """A gather (`take`: each output element one input element, at an index read from a
    tensor) is injective, as Relay had it; TVM's analysis calls any data-dependent load
    opaque, which would leave a table lookup (TabulateInt8Functions), its int32 index and
    its requantization three kernels, with whole tensors between them."""
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tvm.tirx.PrimFunc) and int(func.attrs["op_pattern"]) > REDUCTIONS[-1] and _is_gather(func):
            mod[gv] = func.with_attr("op_pattern", INJECTIVE).with_attr(GATHER, True)
    return mod


def _is_gather(func: tvm.tirx.PrimFunc) -> bool:
    """One spatial block storing one load, at indices read from another buffer."""
    try:
        sch = Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except ScheduleError:
        return False  # not a block-based kernel
    if len(blocks) != 1:
        return False
    block = sch.get(blocks[0])
    store = block.body
    return isinstance(store, tvm.tirx.BufferStore) and isinstance(store.value, tvm.ir.TensorLoad) \
        and len({r.source.name for r in block.reads}) > 1 \
        and all(int(iv.iter_type) == tvm.tirx.IterVar.DataPar for iv in block.iter_vars)


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
    call_tir = op_name(binding.value) in ("relax.call_tir", "relax.call_tir_inplace")
    return mod[binding.value.args[0]] if call_tir else None


def _group_function(bb: relax.BlockBuilder, mod: tvm.IRModule, name: str, updates: bool, depthwise: bool) -> None:
    func = mod[name]
    if len(func.body.blocks) != 1:
        return
    bindings = list(func.body.blocks[0].bindings)
    index = {b.var: i for i, b in enumerate(bindings)}
    uses = readers(bindings)
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
    gathers = {}  # by root: the group looks up a table
    size = {i: 1 for i in range(len(bindings))}  # ops per group, by root
    for i, b in enumerate(bindings):
        prim = _prim(mod, b)
        if prim is not None:
            patterns[i] = int(prim.attrs["op_pattern"])
            reductions[i] = int(patterns[i] in REDUCTIONS)
            gathers[i] = bool(prim.attrs.get(GATHER, False))
    for i, b in enumerate(bindings):
        if i not in patterns or patterns[i] > REDUCTIONS[-1]:
            continue
        for arg in b.value.args[1].fields:
            j = index.get(arg)
            if j is None or j not in patterns or j in inplace_writes or uses.get(arg) != [i]:
                continue
            update = i in inplace_writes  # reads its gradient element by element, once
            if update and not (updates and _elementwise_after_reduction(find(j), j, find, patterns, bindings)
                               and not _group_reads(find(j), j, find, bindings, inplace_writes[i])):
                continue  # (a gradient masked by the old weight, as with float masters, stays apart)
            pj, gi, gj = patterns[j], find(i), find(j)
            if gi == gj or reductions[gi] + reductions[gj] > 1 or (j < start <= i) \
                    or size[gi] + size[gj] > MAX_GROUP_OPS:
                continue
            if gathers[gj] and str(getattr(arg.ty, "dtype", "")) == "int8":
                continue  # a table lookup's int8 result is stored: looked up once, not at each read
            prologue = pj <= INJECTIVE and not reductions[gj]
            epilogue = patterns[i] <= INJECTIVE and not reductions[gi] and (
                update or (not _widens(bindings[j], b) and _elements(b) <= _elements(bindings[j])))
            if not (prologue or epilogue):
                continue
            inputs = relax.analysis.free_vars(bindings[j].value)
            if any(w & set(inputs) for k, w in inplace_writes.items() if j < k < i):
                continue
            parent[gj] = gi
            reductions[gi] += reductions[gj]
            size[gi] += size[gj]
            gathers[gi] = gathers[gi] or gathers[gj]

    groups: dict[int, list[int]] = {}
    for i in patterns:
        groups.setdefault(find(i), []).append(i)
    pairs = _channelwise_pairs(mod, bindings, groups, patterns, uses, index, start) if depthwise else []
    for producer, consumer in pairs:
        groups[consumer] = sorted(groups.pop(producer) + groups[consumer])
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


def _elementwise_after_reduction(group, last, find, patterns, bindings) -> bool:
    """Whether the gradient `last` is its group's reduction followed only by same-size
    elementwise work (QAS, reshapes): then the update can take each element as the
    reduction sums it.
    A slice or mask in between (float master copies) would leave the whole reduction result
    as a workspace of the fused kernel, larger than the gradient it replaces."""
    members = [m for m in range(last + 1) if find(m) == group]
    reductions = [m for m in members if patterns.get(m) in REDUCTIONS]
    if not reductions:
        return True  # injective work only: all of it inlines
    size = _elements(bindings[reductions[0]])
    return all(patterns.get(m, 0) <= INJECTIVE and _elements(bindings[m]) == size
               for m in members if m > reductions[0])


def _group_reads(group, last, find, bindings, variables) -> bool:
    return any(set(relax.analysis.free_vars(bindings[m].value)) & variables
               for m in range(last + 1) if find(m) == group)


def _channelwise_pairs(mod, bindings, groups, patterns, uses, index, start):
    """(producer group, consumer group) pairs where the consumer's reduction is a depthwise
    conv and its only input computed in the step is the producer's result, read by no one
    else, both in the forward pass. The fused kernel computes each channel of that
    result just before the depthwise conv reads it: a one-channel plane instead of the whole
    tensor (the expansion before a depthwise conv is the widest tensor of a MobileNet block).
    """
    sink_group = {max(members): root for root, members in groups.items()}
    reductions = {root: [i for i in members if patterns[i] in REDUCTIONS] for root, members in groups.items()}
    pairs = []
    for root, members in groups.items():
        if len(reductions[root]) != 1 or not _is_depthwise(_prim(mod, bindings[reductions[root][0]])) \
                or max(members) >= start:
            continue
        inputs = {v for i in members for v in relax.analysis.free_vars(bindings[i].value)
                  if v in index and index[v] not in members}
        if len(inputs) != 1:
            continue
        (t,) = inputs
        producer = sink_group.get(index[t])
        if producer is None or producer == root or len(uses.get(t, [])) != 1:
            continue
        if len(reductions[producer]) == 1:
            pairs.append((producer, root))
    fused: set[int] = set()  # two reductions per kernel at most: no chains of pairs
    chosen = []
    for producer, consumer in pairs:
        if not {producer, consumer} & fused:
            fused |= {producer, consumer}
            chosen.append((producer, consumer))
    return chosen


def _is_depthwise(prim) -> bool:
    """A legalized conv2d PrimFunc (data, weight, out) with one input channel per output
    channel and as many outputs as inputs: output channel c reads input channel c only."""
    if prim is None or len(prim.params) != 3:
        return False
    data, weight, out = (tuple(int(d) for d in p.ty.shape) for p in prim.params)
    return len(data) == len(weight) == len(out) == 4 and weight[1] == 1 and data[1] == out[1] == weight[0]


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
    sink = members[-1].value
    if op_name(sink) == "relax.call_tir_inplace":  # an update that computes its own gradient
        name = "update_with_gradient"  # one kernel may serve several parameters of one shape
    else:
        name = "fused_" + "_".join(b.value.args[0].name_hint for b in members)[:60]
    return bb.add_func(fn, name), args


def shrink_intermediates(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """Schedule a fused kernel so that its intermediate tensors vanish (see module doc).

    Every injective block is inlined into its readers, except, where a kernel holds two
    reductions, the narrowest tensor between them (the producer's result, int8 in an int8
    model, which the depthwise conv reads), and the int8 operands of a conv (see
    `_staged_operands`). Then, from the last block backwards, each remaining block is
    computed inside the loops of its reader (but a reduction to a single value, which stays
    in front, computed once): a reduction at the innermost loop (one
    accumulator; a row for a pointwise conv or an int8 conv whose plane is too large, a
    plane for a small depthwise conv or int8 conv with a window), that kept tensor at the reader's channel loop (one
    channel at a time), a staged weight or depthwise input plane at the conv's
    output-channel loop (an int8 conv's weights concatenated from trained and frozen parts, or
    cast to float32 for its input gradient), a staged pointwise input at the conv's row loop (the kernel then
    walks rows outside output channels), or whole before the conv where channels must stay
    outside (a depthwise pair). A pointwise conv's row accumulator holds two channels where
    the kernel ends with it (`_pair_channel_rows`) or where its int8 result is a depthwise
    pair's kept tensor (`_pair_kept_planes`: two channels' planes kept, the depthwise conv
    then run on each), an input gradient's two whole planes
    where they are small (`_small_gradient_planes`); a pointwise weight gradient's
    accumulator a 4 x 4 tile of weights (`_tile_weight_gradient`)."""
    if int(func.attrs.get("op_pattern", 0)) > REDUCTIONS[-1]:
        return func  # opaque: nothing to schedule
    sch = Schedule(func)
    root = sch.get_sblock("root")
    kept = _between_reductions(sch, sch.get_child_blocks(root))
    staged = {n: k for n, k in _staged_operands(sch, sch.get_child_blocks(root)).items() if n not in kept}
    changed = True
    while changed:  # inline every injective block into its readers (and epilogues into the last)
        changed = False
        for block in sch.get_child_blocks(root)[:-1]:
            if sch.get(block).name_hint in kept or sch.get(block).name_hint in staged:
                continue
            try:
                sch.compute_inline(block)
                changed = True
                break
            except ScheduleError:
                continue
    rows_outside = False
    # rows outside output channels: the input staged a row at a time, or an int8 pointwise
    # conv's input row read by every output channel pair in turn (tensorize stages it once)
    paired_int8 = not staged and _int8_pointwise_last(sch, sch.get_child_blocks(root))
    if not kept and (INPUT in staged.values() or paired_int8):
        last = sch.get_loops(sch.get_child_blocks(root)[-1])
        if len(last) == 4:
            sch.reorder(last[2], last[1])
            rows_outside = True
    paired = _pair_channel_rows(sch, sch.get_child_blocks(root), rows_outside)
    whole = paired is not None and not rows_outside and _small_gradient_planes(sch, sch.get_sblock(paired))
    tiled = _tile_weight_gradient(sch, sch.get_child_blocks(root)) if paired is None and not rows_outside else None
    pair_kept = _pair_kept_planes(sch, sch.get_child_blocks(root), kept) if paired is None and not rows_outside \
        else None
    if pair_kept is not None:
        paired = pair_kept[1]
    reductions = []
    for block in reversed(sch.get_child_blocks(root)[:-1]):
        name = sch.get(block).name_hint
        consumers = sch.get_consumers(block)
        if len(consumers) != 1 or (staged.get(name) == INPUT and not rows_outside):
            continue
        outer = sch.get_loops(consumers[0])
        reduction = _is_reduction(sch, block)
        if reduction and _one_value(sch, block):
            continue  # computed once, not again for every element its reader writes
        if staged.get(name) == INPUT:
            at = ROW_AXIS
        elif (name in kept or staged.get(name) in (WEIGHT, PLANE) or _plane_accumulated(sch, block)) \
                and len(outer) > CHANNEL_AXIS:
            at = CHANNEL_AXIS
            if pair_kept is not None and name != pair_kept[0]:
                at += 1  # one channel of the pair: the loop inside the pairs
        else:
            row = _is_pointwise(sch, block) or _row_accumulated(sch, block)
            at = len(outer) - (2 if len(outer) > 1 and row else 1)
            if name == paired:  # the row loop above the two channels, or the pair loop: whole planes
                at -= 2 if whole else 1
            if name == tiled:  # the loop over tiles of input channels: the accumulator holds a tile
                at = 1
        try:
            sch.compute_at(block, outer[at], preserve_unit_loops=True)
        except ScheduleError:
            continue
        if pair_kept is not None and name == pair_kept[0]:
            loops = sch.get_loops(block)  # (n, pair, n, the pair, y, x): the rows outside the pair
            sch.reorder(loops[-2], loops[-3])
        if reduction:
            reductions.append((block, at + 1))
    for block, depth in reductions:
        # the accumulator's zeroing before its loop nest, not inside it (clearer C, and
        # gcc can see the accumulator is initialised)
        try:
            sch.decompose_reduction(block, sch.get_loops(block)[depth])
        except ScheduleError:
            pass
    return scheduled(sch, func)


INPUT, WEIGHT, PLANE = "input", "weight", "plane"


def _staged_operands(sch, blocks) -> dict[str, str]:
    """The int8 operands of pointwise and depthwise convs, of convs with a window (their
    weights) and of linear layers that the kernel computes itself: block name -> INPUT or
    WEIGHT (pointwise), PLANE (depthwise), WEIGHT (a conv with a window: an output channel's),
    INPUT (a linear layer's input vector, computed whole before the product). An int8 input computed in
    the kernel (a requantized residual sum, the rounding of a float tensor kept for
    backward) or weights concatenated from a trained and a frozen part would, inlined, be
    recomputed for every multiply-accumulate; kept as a small int8 buffer they are computed
    once per element, and a pointwise conv reads int8 tensors only, the form
    `targets/tensorize.py` hands to a micro-kernel. A depthwise conv's input is staged a
    channel plane at a time (computed once instead of once per window tap)."""
    staged = {}
    for conv in blocks:
        depthwise, matmul = _is_depthwise_conv(sch, conv), _is_matmul(sch, conv)
        reduced = _conv_reduction(sch, conv)
        window = reduced is not None and reduced[0] > 1 and reduced[1] * reduced[2] > 1  # over channels, with a window
        if not (depthwise or matmul or window or _is_pointwise(sch, conv)):
            continue
        if window and _float_data_int8_weights(sch, conv):
            staged.update({sch.get(b).name_hint: WEIGHT for b in _weight_cast(sch, conv)})
            continue
        frontier, seen = list(sch.get_producers(conv)), set()
        while frontier:  # back from the conv through injective blocks, up to the first int8 result
            block = frontier.pop()
            name = sch.get(block).name_hint
            if name in seen or _is_reduction(sch, block):
                continue
            seen.add(name)
            writes = sch.get(block).writes
            if len(writes) == 1 and str(writes[0].source.ty.dtype) == "int8":
                shape = [int(d) for d in writes[0].source.shape]
                if depthwise:  # its window reads each input element kh x kw times
                    staged[name] = PLANE
                elif matmul:  # the input vector; a weight is read once per product anyway
                    if shape[0] == 1:
                        staged[name] = INPUT
                elif window:  # an output channel's weights, read by each of its outputs
                    if len(shape) == 4 and shape[0] != 1:
                        staged[name] = WEIGHT
                else:
                    staged[name] = WEIGHT if len(shape) == 4 and shape[0] != 1 and shape[2:] == [1, 1] else INPUT
                continue
            frontier.extend(sch.get_producers(block))
    return staged


def _operand_producer(sch, conv, side: str):
    """The block writing the buffer that a conv's product reads on `side` ("a": the data,
    "b": the weights), or None."""
    store = sch.get(conv).body
    mul = store.value.b if isinstance(store, tvm.tirx.BufferStore) and isinstance(store.value, tvm.tirx.Add) else None
    load = getattr(mul, side, None) if isinstance(mul, tvm.tirx.Mul) else None
    if not isinstance(load, tvm.ir.expr.TensorLoad):
        return None
    for block in sch.get_producers(conv):
        if any(w.source.same_as(load.source) for w in sch.get(block).writes):
            return block
    return None


def _int8_behind(sch, block) -> list:
    """The chain of injective blocks from `block` back to the first that reads an int8
    tensor (that one last), or [] if there is none."""
    chain = []
    while block is not None and not _is_reduction(sch, block):
        chain.append(block)
        if any(str(r.source.ty.dtype) == "int8" for r in sch.get(block).reads):
            return chain
        producers = sch.get_producers(block)
        block = producers[0] if len(producers) == 1 else None
    return []


def _float_data_int8_weights(sch, conv) -> bool:
    """A conv of float32 data with int8 weights: a conv's input gradient (conv2d_transpose) in
    an int8 model, whose data is the float32 output gradient."""
    data, weights = _operand_producer(sch, conv, "a"), _operand_producer(sch, conv, "b")
    if weights is None or not _int8_behind(sch, weights):
        return False
    return data is None or not _int8_behind(sch, data)


def _weight_cast(sch, conv) -> list:
    """The block casting a conv's int8 weights to float32 (the last of its weights' chain):
    staged an output channel at a time, the conv reads float32 weights, the form of a float
    conv's plane (tt_conv_plane_f32); the float of an int8 is exact, so the same products."""
    chain = _int8_behind(sch, _operand_producer(sch, conv, "b"))
    return chain[-1:] if chain and str(sch.get(chain[-1]).writes[0].source.ty.dtype) == "float32" else []


def scheduled(sch: Schedule, func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """The PrimFunc `sch` made of `func`, without the "main" symbol Schedule gives it."""
    result = sch.mod["main"]
    if func.attrs is None or "global_symbol" not in func.attrs:
        result = result.without_attr("global_symbol")
    return result


CHANNEL_AXIS = 1  # NCHW: the loop of a reader over the channels of what it reads
ROW_AXIS = 1      # a pointwise conv walking rows outside output channels: its row loop


def _conv_reduction(sch, block) -> tuple[int, ...] | None:
    """The reduced extents (channels, kh, kw) of an NCHW conv block, (n, f, y, x) spatial."""
    ivs = sch.get(block).iter_vars
    if len(ivs) != 7 or [int(v.iter_type) for v in ivs] != [0] * 4 + [tvm.tirx.IterVar.CommReduce] * 3:
        return None
    return tuple(int(v.dom.extent) for v in ivs[4:])


def _is_pointwise(sch, block) -> bool:
    """A 1x1 conv. Its accumulator is a row, so that lowering can hand the whole row to a
    micro-kernel (targets/tensorize.py)."""
    reduced = _conv_reduction(sch, block)
    return reduced is not None and reduced[1:] == (1, 1)


# A depthwise conv (int8) or a conv with a window (float32) whose output plane is at most this
# many bytes of float32 keeps a plane accumulator (computed at its reader's channel loop),
# which lowering hands to a micro-kernel whole (targets/tensorize.py); larger ones keep one
# accumulator per pixel.
PLANE_ACCUMULATOR_BYTES = 4096
# ... except for a depthwise conv's input gradient, whose kernels run where the late-stage
# schemes peak (MobileNetV2's 138 KB scheme peaks in a 16x16 one, which a 1 KB plane
# accumulator would raise): at most this many bytes, which TVM keeps on the C stack.
GRADIENT_PLANE_BYTES = 512
GRADIENT_PLANE_MIN_TAPS = 25  # stride-1 ones from 5x5 windows up (see _plane_accumulated)


def _int8_pointwise_last(sch, blocks) -> bool:
    """Whether the kernel's last block reads one conv, an int8 pointwise conv with an even
    number of output channels (which `_pair_channel_rows` pairs)."""
    convs = [b for b in sch.get_producers(blocks[-1]) if _conv_reduction(sch, b) is not None]
    loops = sch.get_loops(blocks[-1])
    if len(convs) != 1 or not _is_pointwise(sch, convs[0]) or len(loops) != 4 or int(sch.get(loops[1]).extent) % 2:
        return False
    conv = sch.get(convs[0])
    return {str(r.source.ty.dtype) for r in conv.reads if not r.source.same_as(conv.writes[0].source)} == {"int8"}


def _pair_channel_rows(sch, blocks, rows_outside: bool) -> str | None:
    """A pointwise conv (int8, or an input gradient: float32 output gradient times int8
    weights) whose result only the kernel's last block reads: that block's channel loop is
    split by 2 and moved just above its pixel loop, so that the conv's row accumulator holds
    two channels' rows and one micro-kernel call computes both, loading each input value
    once for the two (targets/tensorize.py). With `rows_outside` (the loops are already
    (n, y, channel, x)) the channel loop is split where it is. Returns the conv's block name,
    else None."""
    last = blocks[-1]
    loops = sch.get_loops(last)
    channel = 2 if rows_outside else 1
    convs = [b for b in sch.get_producers(last) if _is_pointwise(sch, b)]
    if len(loops) != 4 or len(convs) != 1 or int(sch.get(loops[channel]).extent) % 2:
        return None
    conv = sch.get(convs[0])
    operands = {str(r.source.ty.dtype) for r in conv.reads if not r.source.same_as(conv.writes[0].source)}
    if operands not in ({"float32", "int8"}, {"int8"}):
        return None
    outer, inner = sch.split(loops[channel], [None, 2])
    if not rows_outside:
        sch.reorder(outer, loops[2], inner)  # (n, channel pairs, y, the pair, x)
    return conv.name_hint


# A depthwise pair's kept planes are computed two channels at a time only where one plane takes
# at most this many bytes (int8 64x64: MCUNet's and MobileNetV2's first expansions), so that
# the second plane adds at most 4 KB to a kernel's workspace, wherever the arena peaks.
PAIR_PLANE_MAX_BYTES = 4096


def _pair_kept_planes(sch, blocks, kept: set[str]) -> tuple[str, str] | None:
    """A depthwise pair (pointwise expansion, depthwise conv) whose kept tensor is the int8
    result of an int8 pointwise conv with an even number of channels, its planes at most
    PAIR_PLANE_MAX_BYTES: the last block's channel loop is split by 2, so that the kept
    tensor holds two channels' planes, computed row by row for both channels at once (the
    conv's row accumulator holds two rows, one micro-kernel call computes both, loading each
    input value once for the two: targets/tensorize.py), and the depthwise conv then runs on
    each plane of the pair. Costs one more int8 plane of workspace. Returns (kept block,
    conv block) names, else None."""
    last = blocks[-1]
    loops = sch.get_loops(last)
    if len(kept) != 1 or len(loops) != 4 or int(sch.get(loops[1]).extent) % 2:
        return None
    block = next(b for b in blocks if sch.get(b).name_hint in kept)
    convs = [b for b in sch.get_producers(block) if _is_pointwise(sch, b)]
    result = sch.get(block).writes[0].source
    if len(convs) != 1 or str(result.ty.dtype) != "int8" or len(result.shape) != 4 \
            or int(result.shape[2]) * int(result.shape[3]) > PAIR_PLANE_MAX_BYTES:
        return None
    conv = sch.get(convs[0])
    if {str(r.source.ty.dtype) for r in conv.reads if not r.source.same_as(conv.writes[0].source)} != {"int8"}:
        return None
    sch.split(loops[1], [None, 2])
    return sch.get(block).name_hint, conv.name_hint


# An input gradient's pointwise conv whose two channels' planes take at most this many bytes of
# float32 (MCUNet's and MobileNetV2's last stages, 4x4 and 5x5) computes them whole, one call for
# both planes instead of one per row: rows that narrow leave the micro-kernel 4 pixels a step
# where 8 fit its registers, and a call per row costs more than the row's pixels.
GRADIENT_PAIR_PLANES_BYTES = 256


def _small_gradient_planes(sch, block) -> bool:
    """Whether `block`, a paired pointwise conv, is an input gradient (float32 output gradient
    times int8 weights) whose two channels' planes fit GRADIENT_PAIR_PLANES_BYTES."""
    b = sch.get(block)
    operands = {str(r.source.ty.dtype) for r in b.reads if not r.source.same_as(b.writes[0].source)}
    plane = int(b.iter_vars[2].dom.extent) * int(b.iter_vars[3].dom.extent)
    return operands == {"float32", "int8"} and 2 * plane * 4 <= GRADIENT_PAIR_PLANES_BYTES


def _one_value(sch, block) -> bool:
    """Whether `block` writes a tensor of one element (a softmax's maximum or sum of
    exponentials, which every output of the softmax reads)."""
    return all(int(d) == 1 for d in sch.get(block).writes[0].source.shape)


WEIGHT_GRADIENT_TILE = 4  # output x input channels of a pointwise weight gradient summed by one call


def _tile_weight_gradient(sch, blocks) -> str | None:
    """A pointwise conv's weight gradient (int8 inputs times the float32 output gradient,
    summed over the plane) that only the kernel's last block reads (its SGD update): that
    block's output and input channel loops are split by WEIGHT_GRADIENT_TILE and their outer
    parts moved outside, so that the gradient's accumulator holds a tile of weights and one
    micro-kernel call sums it, each input and gradient value loaded once for 4 products
    (targets/tensorize.py). Returns the gradient's block name, else None."""
    last = blocks[-1]
    loops = sch.get_loops(last)
    grads = [b for b in sch.get_producers(last) if _pointwise_weight_gradient(sch, b)]
    if len(loops) != 4 or len(grads) != 1 or len(sch.get_consumers(grads[0])) != 1 \
            or any(int(sch.get(loop).extent) % WEIGHT_GRADIENT_TILE for loop in loops[:2]):
        return None
    f_outer, f_inner = sch.split(loops[0], [None, WEIGHT_GRADIENT_TILE])
    c_outer, c_inner = sch.split(loops[1], [None, WEIGHT_GRADIENT_TILE])
    sch.reorder(f_outer, c_outer, f_inner, c_inner)
    return sch.get(grads[0]).name_hint


def _pointwise_weight_gradient(sch, block) -> bool:
    """Whether `block` sums a pointwise conv's weight gradient, (f, c, 1, 1) spatial and the
    plane reduced, `acc + (float(int8 input) - zero point) * float32 output gradient`."""
    b = sch.get(block)
    reduced = _conv_reduction(sch, block)
    if reduced is None or reduced[1] * reduced[2] <= 1 or any(int(v.dom.extent) != 1 for v in b.iter_vars[2:4]):
        return False
    store = b.body
    mul = store.value.b if isinstance(store, tvm.tirx.BufferStore) and isinstance(store.value, tvm.tirx.Add) else None
    if not isinstance(mul, tvm.tirx.Mul) or str(mul.b.ty) != "float32":
        return False
    x = mul.a.a if isinstance(mul.a, tvm.tirx.Sub) and isinstance(mul.a.b, tvm.tirx.FloatImm) else mul.a
    return isinstance(x, tvm.tirx.Cast) and str(x.ty) == "float32" and str(x.value.ty) == "int8"


def _plane_accumulated(sch, block) -> bool:
    """A conv whose output plane, at most PLANE_ACCUMULATOR_BYTES of float32, a micro-kernel
    computes whole: an int8 conv with a window (depthwise, or over all its input channels in
    TOPI's padded form: `_padded_int8_conv`), a float32 conv with a window (float models;
    `acc + if_then_else(inside, a, 0) * w`, TOPI's padded form, `a` possibly through a ReLU),
    or the input gradient of an int8 depthwise conv (`transposed_depthwise`) with a stride,
    or a window of GRADIENT_PLANE_MIN_TAPS or more (the kernel skips the taps off the grid or
    off the plane, which TVM's loop tests one by one; at stride 1 a 3x3 window has few taps
    off the plane, and on MCUNet's 4x4 and 8x8 planes the kernel's per-output setup cost
    more than TVM's loop, measured: 9.1-9.2 against 10.8-13.9 instructions per MAC)."""
    b = sch.get(block)
    reduced = _conv_reduction(sch, block)
    if reduced is None or reduced[1] * reduced[2] <= 1:
        return False
    if int(b.iter_vars[2].dom.extent) * int(b.iter_vars[3].dom.extent) * 4 > PLANE_ACCUMULATOR_BYTES:
        return False
    operands = {str(r.source.ty.dtype) for r in b.reads if not r.source.same_as(b.writes[0].source)}
    if operands == {"int8"}:
        return _is_depthwise_conv(sch, block) or _padded_int8_conv(b)
    if operands == {"float32", "int8"}:  # most taps lie off the grid or the plane, which the kernel skips
        form = _is_depthwise_conv(sch, block) and transposed_depthwise(b)
        small = int(b.iter_vars[2].dom.extent) * int(b.iter_vars[3].dom.extent) * 4 <= GRADIENT_PLANE_BYTES
        many_taps = reduced[1] * reduced[2] >= GRADIENT_PLANE_MIN_TAPS
        return bool(form) and (form[1] is not None or many_taps) and small
    return operands == {"float32"} and padded_float_conv(b) is not None


def _padded_int8_conv(block) -> bool:
    """An int8 conv over all its input channels (not grouped) in TOPI's padded form, `acc +
    if_then_else(inside, float(a[n, r, ..]) - zx, 0) * float(w)`, r the reduced channel: one
    output channel's plane is what a micro-kernel computes (tt_conv_plane_s8)."""
    store = block.body
    term = store.value.b if isinstance(store, tvm.tirx.BufferStore) and isinstance(store.value, tvm.tirx.Add) else None
    padded = term.a if isinstance(term, tvm.tirx.Mul) else None
    if not (isinstance(padded, tvm.ir.expr.Call) and padded.op.name == "prim.if_then_else"):
        return False
    value = padded.args[1]
    load = value.a if isinstance(value, tvm.tirx.Sub) else value
    load = load.value if isinstance(load, tvm.tirx.Cast) else None
    return (isinstance(load, tvm.ir.expr.TensorLoad) and str(load.ty) == "int8"
            and load.indices[1].same_as(block.iter_vars[4].var))


def _row_accumulated(sch, block) -> bool:
    """An int8 conv with a window whose output plane is too large for a plane accumulator
    (the stem, a depthwise conv at full resolution): it keeps a row accumulator, which
    lowering hands to a micro-kernel on the rows that read no top or bottom padding
    (targets/tensorize.py)."""
    b = sch.get(block)
    reduced = _conv_reduction(sch, block)
    if reduced is None or reduced[1] * reduced[2] <= 1:
        return False
    if int(b.iter_vars[2].dom.extent) * int(b.iter_vars[3].dom.extent) * 4 <= PLANE_ACCUMULATOR_BYTES:
        return False  # small planes: a row kernel's call costs more than TVM's loop saves (the digits demo)
    return {str(r.source.ty.dtype) for r in b.reads if not r.source.same_as(b.writes[0].source)} == {"int8"}


def padded_float_conv(block):
    """(padding condition, input load, relu, weight load) when `block` updates a float32
    conv's accumulator in TOPI's padded form, `acc + if_then_else(inside, a, 0.0) * w` with
    `a` possibly `max(a, 0.0)` (a ReLU fused in front of the conv); else None."""
    store = block.body
    if not isinstance(store, tvm.tirx.BufferStore) or not isinstance(store.value, tvm.tirx.Add):
        return None
    term = store.value.b
    if not isinstance(term, tvm.tirx.Mul) or not isinstance(term.a, tvm.ir.expr.Call):
        return None
    padded, weight = term.a, term.b
    if padded.op.name != "prim.if_then_else" or len(padded.args) != 3:
        return None
    operand = padded.args[1]
    relu = isinstance(operand, tvm.tirx.Max) and isinstance(operand.b, tvm.tirx.FloatImm) and operand.b.value == 0
    load = operand.a if relu else operand
    if not all(isinstance(x, tvm.ir.expr.TensorLoad) and str(x.ty) == "float32" for x in (load, weight)):
        return None
    return padded.args[0], load, relu, weight


def transposed_depthwise(block):
    """(padding condition, parity condition or None, gradient load, weight load) when `block`
    updates the input gradient of an int8 depthwise conv as TOPI's conv2d_transpose writes it,
    `acc + if_then_else(inside, g, 0) * float(w)` with int8 w and float32 g, at a stride above
    1 `g` itself `if_then_else(on the stride's grid, dy, 0)`; else None."""
    store = block.body
    if not isinstance(store, tvm.tirx.BufferStore) or not isinstance(store.value, tvm.tirx.Add):
        return None
    term = store.value.b
    if not isinstance(term, tvm.tirx.Mul) or not isinstance(term.b, tvm.tirx.Cast):
        return None
    weight = term.b.value
    if not (isinstance(weight, tvm.ir.expr.TensorLoad) and str(weight.ty) == "int8"):
        return None
    padded = term.a
    if not (isinstance(padded, tvm.ir.expr.Call) and padded.op.name == "prim.if_then_else"):
        return None
    grid, load = None, padded.args[1]
    if isinstance(load, tvm.ir.expr.Call) and load.op.name == "prim.if_then_else":
        grid, load = load.args[0], load.args[1]
    if not (isinstance(load, tvm.ir.expr.TensorLoad) and str(load.ty) == "float32"):
        return None
    return padded.args[0], grid, load, weight


def _is_matmul(sch, block) -> bool:
    """A linear layer's product (batch, out) = (batch, in) x (in, out): its input vector,
    computed once when the kernel computes it (`_staged_operands`), is read by every output."""
    ivs = sch.get(block).iter_vars
    return [int(v.iter_type) for v in ivs] == [0, 0, tvm.tirx.IterVar.CommReduce]


def _is_depthwise_conv(sch, block) -> bool:
    """A conv over one input channel per output channel with a real window (kh x kw > 1)."""
    reduced = _conv_reduction(sch, block)
    return reduced is not None and reduced[0] == 1 and reduced[1] * reduced[2] > 1


def _is_reduction(sch, block) -> bool:
    return any(int(iv.iter_type) == tvm.tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def _between_reductions(sch, blocks) -> set[str]:
    """In a kernel with two reductions (a depthwise pair): the name of the block to keep
    between them, the narrowest on the data path from the first to the second (the int8
    result of an int8 producer), the last of those; else nothing."""
    reductions = [b for b in blocks if _is_reduction(sch, b)]
    if len(reductions) != 2:
        return set()
    second = sch.get(reductions[1]).name_hint
    path, frontier = [], [reductions[0]]
    while frontier:
        block = frontier.pop()
        for consumer in sch.get_consumers(block):
            name = sch.get(consumer).name_hint
            if name != second and name not in {sch.get(b).name_hint for b in path}:
                path.append(consumer)
                frontier.append(consumer)
    if not path:
        return set()
    order = {sch.get(b).name_hint: i for i, b in enumerate(blocks)}
    bits = {sch.get(b).name_hint: min(tvm.runtime.DataType(str(w.source.ty.dtype)).bits for w in sch.get(b).writes)
            for b in path}
    return {max(bits, key=lambda name: (-bits[name], order[name]))}
