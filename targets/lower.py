"""Lower a `TrainingProgram` to TIR kernels in C and a flat schedule of kernel calls.

TVM does the kernels: `LegalizeOps` turns every Relax op into a TIR PrimFunc and
`tvm.tirx.build(..., target="c")` prints them as portable C. What TVM 0.27 no longer has
(no AOT executor, no C runtime) is the whole-graph driver; this module prepares it: it walks
each Relax function once and records, in order, which kernel runs on which tensors, where
each tensor lives (input, parameter, constant, or the arena) and which Relax values are
only aliases (tuples, `TupleGetItem`, in-place updates) of another tensor's storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_tinytrain.c_names import CNamer, c_identifier
from tvm_tinytrain.errors import TinyTrainError
from tvm_tinytrain.passes import (ForwardTupleItems, FuseKernels, InplaceDepthwise, Int8Activations, PackBackwardMasks,
                                  RecomputeParamViews,
                                  PatchFrozenPrefix, ReorderForMemory, SplitTrainedChannels, TabulateInt8Functions)
from tvm_tinytrain.passes.patch_frozen_prefix import ATTR as PATCH_ATTR
from tvm_tinytrain.passes.sgd_kernels import STEP_COUNTER
from tvm_tinytrain.passes.split_trained_channels import FROZEN_SUFFIX, split_values, trained_channels
from tvm_tinytrain.pipeline import TrainingProgram
from .invariant_loads import hoist_invariant_loads
from .tensorize import sblocks, tensorize

SCHEDULE_OF = {"train_step": "train_step", "main": "predict"}  # Relax function -> its schedule's name
DTYPE_BYTES = {"float32": 4, "int64": 8, "int32": 4, "uint32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1}


@dataclass(eq=False)
class Tensor:
    """A buffer of the generated program."""

    name: str                   # C identifier, unique in the program (`c_names.CNamer`)
    shape: tuple[int, ...]
    dtype: str
    storage: str                # "input" | "label" | "counter" | "param" | "momentum" | "const" | "arena"
    param: str | None = None    # parameter name in the source model (storage "param"/"momentum")
    value: np.ndarray | None = None  # storage "const"
    trainable: bool = False     # a parameter that train_step updates in place

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPE_BYTES[self.dtype]


@dataclass(eq=False)
class KernelCall:
    kernel: str                 # TIR PrimFunc name; its C symbol is __tvm_ffi_<kernel>
    args: list[Tensor]          # in the kernel's argument order (inputs then outputs)
    inputs: list[Tensor]
    outputs: list[Tensor]       # the tensors this call defines (in-place: the updated inputs)
    workspace_bytes: int        # upper bound of what the kernel asks TVMBackendAllocWorkspace for
    macs: int = 0               # multiply-accumulates (executions of its reduction bodies)
    kind: str = "elementwise"   # conv | pointwise | depthwise | weight-grad | matmul | pool | reduce | elementwise

    @property
    def is_update(self) -> bool:
        """Writes a trainable parameter or a momentum buffer in place (an SGD update)."""
        return any(t.trainable or t.storage == "momentum" for t in self.outputs)


@dataclass
class Schedule:
    """One Relax function as a list of kernel calls over named tensors."""

    name: str
    calls: list[KernelCall]
    inputs: list[Tensor]        # x (and label for train_step)
    outputs: list[Tensor]       # logits, or the loss
    loss_index: int | None = None  # index of the first call after the loss (train_step only)

    def phase(self, i: int) -> str:
        """forward (up to the loss), backward, or update (writes a parameter or momentum)."""
        if self.loss_index is None or i < self.loss_index:
            return "forward"
        return "update" if self.calls[i].is_update else "backward"


@dataclass
class LoweredProgram:
    kernels_c: str
    schedules: dict[str, Schedule]
    tensors: list[Tensor] = field(default_factory=list)
    # (scale, zero) when the program takes its input as int8 (Int8Activations), else None
    input_quantization: tuple[float, float] | None = None
    params: dict[str, np.ndarray] = field(default_factory=dict)  # initial values, as lowered
    split: dict[str, tuple[int, int]] = field(default_factory=dict)  # SplitTrainedChannels: (axis, k)
    # PatchFrozenPrefix: schedule name -> (cut, its NCHW shape, tile rows, tile columns)
    patched_prefix: dict[str, tuple[str, tuple[int, ...], int, int]] = field(default_factory=dict)


def input_quantization(mod: tvm.IRModule) -> tuple[float, float] | None:
    attrs = mod["train_step"].attrs
    value = attrs.get("tinytrain.input_quantization") if attrs else None
    return None if value is None else (float(value[0]), float(value[1]))


def lower(program: TrainingProgram) -> LoweredProgram:
    namer = CNamer()
    mod, values, split = memory_passes(program, c_names=namer)
    mod = relax.transform.DeadCodeElimination(["main", "train_step"])(mod)
    mod = relax.transform.AttachGlobalSymbol()(mod)
    prims = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    params = {}
    for name, value in values.items():
        params[name] = Tensor(namer[name], tuple(value.shape), str(value.dtype), "param", param=name,
                              trainable=name in program.trainable)
    momenta = {n: Tensor(namer[n], shape, "float32", "momentum", param=n)
               for n, shape in program.momentum_shapes.items()}
    built = {n: _for_c(f) for n, f in prims.items()}  # as built to C: its buffers are the workspace
    workspaces = {n: _workspace_bytes(f) for n, f in built.items()}
    schedules = {
        "train_step": _schedule(mod["train_step"], "train_step", prims, workspaces, params, momenta, namer),
        "predict": _schedule(mod["main"], "predict", prims, workspaces, params, momenta, namer),
    }
    with tvm.transform.PassContext(config={"tirx.disable_assert": True}):
        lib = tvm.tirx.build(tvm.IRModule(built), target="c")
    tensors = list(params.values()) + list(momenta.values())
    for s in schedules.values():
        for t in s.inputs + [t for c in s.calls for t in c.args]:
            if t not in tensors:
                tensors.append(t)
    return LoweredProgram(lib.inspect_source(), schedules, tensors, input_quantization(mod), values, split,
                          _patched_prefix(mod))


def _patched_prefix(mod: tvm.IRModule) -> dict:
    found = {}
    for func, schedule in SCHEDULE_OF.items():
        attrs = mod[func].attrs
        if attrs is not None and PATCH_ATTR in attrs:
            cut, rows, cols, *shape = attrs[PATCH_ATTR]
            found[schedule] = (str(cut), tuple(int(d) for d in shape), int(rows), int(cols))
    return found


def _for_c(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """A kernel as built to C: micro-kernels where they match, invariant loads hoisted."""
    return tensorize(hoist_invariant_loads(func)[0])[0]


def memory_passes(program: TrainingProgram, c_names: CNamer | None = None):
    """The program's module, legalized, with the memory passes `program.memory` asks for;
    with the parameters' initial values and the split weights (they change with
    SplitTrainedChannels). Returns (module, values, split).

    `c_names` (lowering to C): before `LegalizeOps`, which names each kernel's parameters
    after the Relax variables it is called on, the functions' parameters take their C
    identifiers from it (the driver's names for them) and every other variable goes
    through `c_identifier`, so the kernels' C is valid whatever the model's names
    (`5.c1.weight`). The Relax VM reference keeps the source names (`c_names=None`)."""
    opts = program.memory
    mod, values, split = _graph_passes(program)
    if c_names is not None:
        mod = _with_c_names(mod, {n: c_names[n] for n in [*values, *program.momentum_shapes]})
    lowered = _kernel_passes(mod, opts)
    if opts.patch_prefix:  # the grid is chosen on the unpatched program's schedule
        from .tiling import choose_tiling  # (it plans with c_emitter's buffers, which imports this module)

        tiling = choose_tiling(mod, _plain_schedules(lowered, values, program, c_names))
        if tiling:
            lowered = _kernel_passes(PatchFrozenPrefix(tiling)(mod), opts)
    return lowered, values, split


def _graph_passes(program: TrainingProgram):
    """The memory passes on Relax ops (before `LegalizeOps`): (module, values, split)."""
    opts = program.memory
    mod, values, split = program.mod, dict(program.params), {}
    if opts.tabulate:
        mod = TabulateInt8Functions()(mod)
    if opts.bit_masks:
        mod = PackBackwardMasks()(mod)
    if opts.int8_activations:
        mod = Int8Activations()(mod)
    if opts.split_channels:
        split = partial_weights(program)
        mod = SplitTrainedChannels(split, program.options.lr)(mod)
        values = {}
        for name, value in program.params.items():
            if name in split:
                values[name], values[name + FROZEN_SUFFIX] = split_values(value, *split[name])
            else:
                values[name] = value
    if opts.recompute_views:
        mod = RecomputeParamViews()(mod)
    return mod, values, split


def _kernel_passes(mod: tvm.IRModule, opts) -> tvm.IRModule:
    """`LegalizeOps` and the memory passes on kernels."""
    mod = ForwardTupleItems()(relax.transform.LegalizeOps()(mod))
    if opts.fuse_kernels:
        mod = FuseKernels(updates=opts.fuse_updates, depthwise=opts.fuse_depthwise)(mod)
    if opts.reorder:
        mod = ReorderForMemory()(mod)
    if opts.inplace_depthwise:  # after reordering: it needs every other reader of the input to come first
        mod = InplaceDepthwise()(mod)
    return mod


def plain_schedules(program: TrainingProgram) -> tuple[dict[str, Schedule], dict[str, np.ndarray]]:
    """The program's schedules as `lower` makes them, without building the kernels to C
    (their workspaces as legalized): seconds instead of tens of seconds, for estimates.
    Returns (schedules, parameter values as lowered)."""
    mod, values, _ = memory_passes(program)
    return _plain_schedules(mod, values, program, None, one_namer=True), values


def _plain_schedules(mod: tvm.IRModule, values: dict, program: TrainingProgram,
                     c_names: CNamer | None, one_namer: bool = False) -> dict[str, Schedule]:
    """A legalized module's schedules with its variables' names and the kernels'
    workspaces as legalized (not as built to C): enough to see which call sets the peak.
    `one_namer`: name both schedules' tensors as `lower` does (a constant they share has
    one name); else each keeps its variables' own names (what `choose_tiling` looks up)."""
    mod = relax.transform.DeadCodeElimination(["main", "train_step"])(mod)
    prims = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    name = (lambda n: c_names[n]) if c_names is not None else (lambda n: n)
    params = {n: Tensor(name(n), tuple(v.shape), str(v.dtype), "param", param=n) for n, v in values.items()}
    momenta = {n: Tensor(name(n), shape, "float32", "momentum", param=n) for n, shape in program.momentum_shapes.items()}
    workspaces = {n: _workspace_bytes(f) for n, f in prims.items()}
    shared = CNamer()
    return {schedule: _schedule(mod[func], schedule, prims, workspaces, params, momenta,
                                shared if one_namer else CNamer())
            for func, schedule in SCHEDULE_OF.items()}


def partial_weights(program: TrainingProgram) -> dict[str, tuple[int, int]]:
    """Trainable weights updated on a sub-tensor: name -> (channel axis, trained channels)."""
    out = {}
    for name in program.trainable.names:
        shape, ratio = program.params[name].shape, program.trainable.ratio[name]
        if len(shape) > 1 and ratio < 1.0:
            axis = min(program.trainable.channel_axis[name], len(shape) - 1)
            out[name] = (axis, trained_channels(shape[axis], ratio))
    return out


def join_split(values: dict[str, np.ndarray], split: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """Whole parameters again from SplitTrainedChannels' pieces (for comparisons)."""
    out = {}
    for name, value in values.items():
        if name.endswith(FROZEN_SUFFIX) and name[:-len(FROZEN_SUFFIX)] in split:
            continue
        if name in split:
            value = np.concatenate([value, values[name + FROZEN_SUFFIX]], axis=split[name][0])
        out[name] = value
    return out


def _with_c_names(mod: tvm.IRModule, params: dict[str, str]) -> tvm.IRModule:
    """Every Relax function of `mod` with the model's parameters named by `params` (source
    name -> C identifier), and its other parameters (`x`, `label`) and every variable it
    defines by `c_identifier`. Only names change."""
    mod = tvm.IRModule(dict(mod.functions))
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            renamed = {p: params[p.name] for p in func.params if p.name in params}
            mod[gv] = _CNames(renamed).visit_expr(func)
    return mod


@mutator
class _CNames(PyExprMutator):
    """Renames variables where they are defined; TVM's mutator then rewrites their uses."""

    def __init__(self, params: dict):
        super().__init__()
        self.params = params

    def _renamed(self, var, cls):
        name = self.params[var] if var in self.params else c_identifier(var.name)
        return var if name == var.name else cls(name, var.ty)

    def visit_var_def_(self, var):
        return self._renamed(var, relax.Var)

    def visit_dataflow_var_def_(self, var):
        return self._renamed(var, relax.DataflowVar)


# TVM's lowering (LowerTVMBuiltin) keeps a CPU buffer of constant size under this many bytes
# on the C stack (`kMaxStackAlloca`) instead of asking TVMBackendAllocWorkspace for it: the
# arena does not hold it, the measured stack high-water mark does.
STACK_ALLOCA_BYTES = 1024


def _workspace_bytes(func: tvm.tirx.PrimFunc) -> int:
    """Intermediate buffers of a kernel (padding, accumulators) that lowering gives to the
    workspace (`STACK_ALLOCA_BYTES` and up), as TVM compacts them to the region actually
    used, 16-byte aligned: an upper bound of its workspace."""
    mod = tvm.IRModule({"main": func})
    passes = tvm.s_tir.transform
    mod = tvm.transform.Sequential([passes.LowerInitBlock(), passes.PlanAndUpdateBufferAllocationLocation(),
                                    passes.ConvertBlocksToOpaque(), passes.CompactBufferAllocation()])(mod)
    buffers = [buf for block in sblocks(mod["main"].body) for buf in block.alloc_buffers]
    total = 0
    for buf in buffers:
        n = int(np.prod([int(d) for d in buf.shape], dtype=np.int64)) * DTYPE_BYTES[str(buf.dtype)]
        if n >= STACK_ALLOCA_BYTES:
            total += (n + 15) // 16 * 16
    return total


def kernel_work(func: tvm.tirx.PrimFunc) -> tuple[int, str]:
    """(MACs, kind) of a kernel. MACs are the executions of its reduction blocks' bodies
    (the product of the loops around each), so a fused kernel counts the reductions it
    really runs, padded taps included. The kind is that of its largest reduction, from its
    name (pool, matmul) or its shape: a reduction over (channels, kh, kw) is a conv, pointwise
    when 1x1, depthwise when over one channel."""
    found: list[tuple[int, str, list[int]]] = []  # (executions, block name, reduction extents)

    def walk(node, mult: int) -> None:
        if isinstance(node, tvm.tirx.For):
            extent = node.extent
            walk(node.body, mult * (int(extent) if isinstance(extent, tvm.tirx.IntImm) else 1))
        elif isinstance(node, tvm.s_tir.SBlockRealize):
            walk(node.block, mult)
        elif isinstance(node, tvm.s_tir.SBlock):
            reduce = [int(v.dom.extent) for v in node.iter_vars if v.iter_type == _REDUCE_ITER]
            if reduce:
                found.append((mult, node.name_hint, reduce))
            walk(node.body, mult)
        else:
            for child in [*(getattr(node, "seq", None) or []),
                          *(getattr(node, a, None) for a in ("body", "then_case", "else_case"))]:
                if isinstance(child, (tvm.tirx.Stmt, tvm.s_tir.SBlock)):
                    walk(child, mult)

    walk(func.body, 1)
    if not found:
        return 0, "elementwise"
    macs = sum(n for n, _, _ in found)
    _, name, reduce = max(found)
    if "pool" in name:
        kind = "pool"
    elif "matmul" in name:
        kind = "matmul"
    elif len(reduce) == 3:  # (channels, kh, kw): a conv, or a conv's input gradient (TVM names it "compute")
        kind = "pointwise" if reduce[1] * reduce[2] == 1 else "depthwise" if reduce[0] == 1 else "conv"
    else:
        kind = "reduce"
    return macs, kind


_REDUCE_ITER = 2  # tvm IterVar.CommReduce
CONV_KINDS = ("conv", "pointwise", "depthwise")


def _tensor_type(ty) -> tuple[tuple[int, ...], str]:
    return tuple(int(d) for d in ty.shape), str(ty.dtype)


def _schedule(func, name, prims, workspaces, params, momenta, namer) -> Schedule:
    env: dict = {}  # relax Var -> Tensor | list (tuples)
    first = func.params[0]
    x = Tensor(namer.fresh("input_" + name), *_tensor_type(first.ty), "input")
    env[first] = x
    inputs = [x]
    by_c_name = {t.name: t for t in [*params.values(), *momenta.values()]}  # as memory_passes named them
    for p in func.params[1:]:
        if p.name == "label":
            env[p] = Tensor(namer.fresh("label"), *_tensor_type(p.ty), "label")
            inputs.append(env[p])
        elif p.name == STEP_COUNTER:  # stochastic rounding's step count: the driver's tt_steps
            env[p] = Tensor(namer.fresh(STEP_COUNTER), *_tensor_type(p.ty), "counter")
            inputs.append(env[p])
        elif p.name in by_c_name:
            env[p] = by_c_name[p.name]
        else:
            raise TinyTrainError(f"internal: unexpected parameter {p.name} of {name}")

    def value_of(expr):
        if isinstance(expr, tvm.ir.expr.Constant):
            arr = expr.value.numpy()
            return Tensor(namer.fresh("constant"), tuple(arr.shape), str(arr.dtype), "const", value=arr)
        if isinstance(expr, relax.Tuple):
            return [value_of(f) for f in expr.fields]
        if isinstance(expr, relax.TupleGetItem):
            return value_of(expr.tuple_value)[expr.index]
        return env[expr]

    calls: list[KernelCall] = []
    for block in func.body.blocks:
        for binding in block.bindings:
            var, value = binding.var, binding.value
            op = getattr(value, "op", None)
            op_name = getattr(op, "name", None)
            if op_name in ("relax.call_tir", "relax.call_tir_inplace"):
                kernel = value.args[0].name_hint
                ins = [value_of(a) for a in value.args[1].fields]
                if op_name == "relax.call_tir_inplace":
                    outs = [ins[i] for i in value.attrs.inplace_indices]
                    args = ins
                else:
                    ty = var.ty
                    tys = list(ty.fields) if isinstance(ty, relax.TupleType) else [ty]
                    outs = [Tensor(namer.fresh(var.name), *_tensor_type(t), "arena") for t in tys]
                    args = ins + outs
                call = KernelCall(kernel, args, ins, outs, workspaces[kernel],
                                  *kernel_work(prims[kernel]))
                if call.kind in CONV_KINDS and (call.is_update or outs[0].shape[:1] != (1,)):
                    call.kind = "weight-grad"  # a conv-shaped reduction whose result is a weight's
                calls.append(call)
                env[var] = outs if len(outs) > 1 or isinstance(var.ty, relax.TupleType) else outs[0]
            elif isinstance(value, (relax.Var, relax.Tuple, relax.TupleGetItem, tvm.ir.expr.Constant)):
                env[var] = value_of(value)
            else:
                raise TinyTrainError(f"internal: cannot lower binding {var.name} = {value} in {name}")
    result = value_of(func.body.body)
    outputs = [result[0]] if isinstance(result, list) else [result]
    loss_index = None
    if isinstance(result, list):  # train_step returns (loss, updated...): backward follows the loss
        loss_index = 1 + next(i for i, c in enumerate(calls) if outputs[0] in c.outputs)
    return Schedule(name, calls, inputs, outputs, loss_index)
