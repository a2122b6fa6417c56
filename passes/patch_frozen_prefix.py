"""PatchFrozenPrefix: the frozen start of the forward pass, computed tile by tile.

A sparse update trains nothing in the early, high-resolution stage of a CNN: it runs
forward only and nothing of it is kept for the backward pass. Its tensors are the largest
of the step (MCUNet's 128x128 sample and the stem's 64x64x16 output, 112 KB together),
yet only its last tensor (the *cut*) is needed afterwards. So the prefix can run patch by
patch, as MCUNetV2's patch-based inference does (Lin et al., NeurIPS 2021): the cut is
split into a grid of spatial tiles, and for each tile the whole prefix runs on just the
region of every tensor that the tile depends on (its receptive field, with the halo the
convs need), then the tile is written into the cut's buffer. Only one tile's
intermediates are alive at a time; the halo rows and columns are computed more than once.

Bit-identical: every output element is computed by the same ops on the same values. A
conv on a region reads real neighbours where the whole tensor has them and the conv's own
zero padding where it reaches past the tensor's border (each tile gets its own padding,
[top, left, bottom, right]); the sum runs in the same order.

The prefix: the bindings from the input up to a cut `T` that are convs (dilation 1, NCHW)
or elementwise ops (a spatial tensor of `T`'s batch with per-channel or scalar operands,
or two spatial tensors of the same size, a residual add), where nothing but the prefix
reads a value the prefix computes except `T` (so nothing is saved for backward).
`prefix_cuts` lists the possible cuts; the caller (`targets.lower`) picks the cut and
grid with the memory planner. This pass runs before `LegalizeOps`.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.script import tirx as T

from tvm_tinytrain.relax_utils import function_attrs, op_name, readers, substitute_vars

ELEMENTWISE = {"relax.astype", "relax.round", "relax.clip", "relax.add", "relax.subtract", "relax.multiply",
               "relax.divide", "relax.maximum", "relax.minimum", "relax.nn.relu", "relax.floor", "relax.ceil"}
TILE_WRITE = "write_tile"  # the kernels that copy a tile into the cut (in place, opaque to fusion)
TILE_READ = "read_tile"  # the kernels that copy a tile's region of the sample (opaque to fusion)
ATTR = "tinytrain.patched_prefix"  # on a patched function: [cut, rows, cols, *cut's NCHW shape]


@dataclass(frozen=True)
class Region:
    """Rows [r0, r1) and columns [c0, c1) of a 4-D NCHW tensor."""

    r0: int
    r1: int
    c0: int
    c1: int

    def union(self, other: "Region | None") -> "Region":
        if other is None:
            return self
        return Region(min(self.r0, other.r0), max(self.r1, other.r1), min(self.c0, other.c0), max(self.c1, other.c1))

    @property
    def rows(self) -> int:
        return self.r1 - self.r0

    @property
    def cols(self) -> int:
        return self.c1 - self.c0


@dataclass(frozen=True)
class Cut:
    """A possible end of the patched prefix."""

    name: str               # the variable the tiles write
    index: int              # its binding's index
    shape: tuple[int, ...]  # NCHW
    nbytes: int


@tvm.transform.module_pass(opt_level=0, name="PatchFrozenPrefix")
class PatchFrozenPrefix:
    """`tiling`: function name -> (cut variable name, tile rows, tile columns) of the grid."""

    def __init__(self, tiling: dict[str, tuple[str, int, int]]):
        self.tiling = dict(tiling)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod = tvm.IRModule(dict(mod.functions))
        for gv in list(mod.get_global_vars()):
            if gv.name_hint in self.tiling and isinstance(mod[gv], relax.Function):
                cut, rows, cols = self.tiling[gv.name_hint]
                if (rows, cols) != (1, 1):
                    mod = _patch(mod, gv, cut, rows, cols)
        return mod


def _spatial(var) -> bool:
    shape = getattr(var.ty, "shape", None)
    return shape is not None and len(shape) == 4 and all(isinstance(d, tvm.tirx.IntImm) for d in shape)


def _hw(var) -> tuple[int, int]:
    shape = var.ty.shape
    return int(shape[2]), int(shape[3])


def prefix_cuts(func: relax.Function) -> list[Cut]:
    """Where the patched prefix may end, earliest first: every binding after which only its
    own result leaves the prefix (empty when the first op reading the input cannot be
    computed on a region)."""
    if len(func.body.blocks) != 1 or not func.params or not _spatial(func.params[0]):
        return []
    bindings = list(func.body.blocks[0].bindings)
    read_by = readers(bindings)
    escaping = set(relax.analysis.free_vars(func.body.body))
    x = func.params[0]
    batch = int(x.ty.shape[0])
    inside = {x}  # the prefix's spatial values so far
    cuts = []
    for i, b in enumerate(bindings):
        args = [a for a in getattr(b.value, "args", []) if isinstance(a, relax.Var)]
        if not any(a in inside for a in args):
            continue  # a weight's cast, a bias reshape: computed outside, read by the tiles
        if not _tileable(b, inside, batch):
            break
        inside.add(b.var)
        outside_reads = [v for v in inside if not v.same_as(b.var) and (v in escaping or max(read_by.get(v, [-1])) > i)]
        if not outside_reads and b.var not in escaping:
            shape = tuple(int(d) for d in b.var.ty.shape)
            size = tvm.runtime.DataType(b.var.ty.dtype).bits // 8
            cuts.append(Cut(b.var.name, i, shape, size * shape[0] * shape[1] * shape[2] * shape[3]))
    return cuts


def _tileable(b, inside, batch) -> bool:
    value, name = b.value, op_name(b.value)
    if not _spatial(b.var) or int(b.var.ty.shape[0]) != batch:
        return False
    if name == "relax.nn.conv2d":
        attrs = value.attrs
        return (value.args[0] in inside and value.args[1] not in inside and attrs.data_layout == "NCHW"
                and attrs.kernel_layout == "OIHW" and attrs.out_layout == "NCHW"
                and all(int(d) == 1 for d in attrs.dilation))
    if name not in ELEMENTWISE:
        return False
    hw = _hw(b.var)
    for a in value.args:
        if isinstance(a, relax.Var) and a in inside:
            if _hw(a) != hw:
                return False
        else:  # a scalar (FloatImm), a per-channel tensor, or a tensor over rows or columns
            shape = getattr(getattr(a, "ty", None), "shape", None)
            if isinstance(a, relax.Var) and shape is None:
                return False
            if shape is not None and len(shape) >= 2 and any(int(d) != 1 for d in list(shape)[-2:]):
                return False  # varies over rows or columns: not per channel
    return True


def _patch(mod: tvm.IRModule, gv, cut_name: str, rows: int, cols: int) -> tvm.IRModule:
    func = mod[gv]
    cut = next(c for c in prefix_cuts(func) if c.name == cut_name)
    bindings = list(func.body.blocks[0].bindings)
    x = func.params[0]
    members = _members(bindings[:cut.index + 1], x)
    local = _local(bindings[:cut.index + 1], members)
    out_var = bindings[cut.index].var
    _, _, height, width = cut.shape
    bb = relax.BlockBuilder(mod)
    staging = gv.name_hint + "_patched"  # a BlockBuilder adds functions; it cannot replace one
    with bb.function(staging, list(func.params), attrs=function_attrs(func), private=False):
        with bb.dataflow():
            for b in bindings[:cut.index + 1]:
                if b.var not in members and b.var not in local:
                    bb.emit_normalized(b)
            whole = None
            for ti, (r0, r1) in enumerate(_split(height, rows)):
                for tj, (c0, c1) in enumerate(_split(width, cols)):
                    tile = _emit_tile(bb, bindings, members, local, x, out_var, Region(r0, r1, c0, c1), f"t{ti}{tj}")
                    whole = _write(bb, whole, tile, out_var, r0, c0)
            bb.emit_normalized(relax.VarBinding(out_var, whole))
            for b in bindings[cut.index + 1:]:
                bb.emit_normalized(b)
        bb.emit_func_output(func.body.body)
    built = bb.get()
    out = tvm.IRModule({g: f for g, f in built.functions.items() if g.name_hint != staging})
    out[gv] = built[staging].with_attr("global_symbol", gv.name_hint).with_attr(ATTR, [cut_name, rows, cols, *cut.shape])
    return out


def _members(bindings, x) -> set:
    """The prefix's bindings' variables: those that read the input, directly or not."""
    inside = {x}
    for b in bindings:
        if any(a in inside for a in relax.analysis.free_vars(b.value)):
            inside.add(b.var)
    inside.discard(x)
    return inside


def _local(bindings, members) -> dict:
    """Values outside the prefix that only the prefix reads (a weight's cast, a bias
    reshape): var -> binding. Each tile computes its own copy, so that they stay fused
    into the tile's kernels instead of being stored once for all tiles."""
    read_by = readers(bindings)
    local = {}
    for b in reversed(bindings):  # readers first
        uses = read_by.get(b.var, [])
        if b.var not in members and uses and all(bindings[j].var in members or bindings[j].var in local for j in uses):
            local[b.var] = b
    return local


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """`parts` near-equal ranges covering [0, n), the larger ones first."""
    q, r = divmod(n, parts)
    bounds, start = [], 0
    for k in range(parts):
        end = start + q + (1 if k < r else 0)
        bounds.append((start, end))
        start = end
    return bounds


def _steps(prefix, spatial, key=lambda v: v) -> list:
    """The prefix's geometry, last binding first: (result, [(spatial argument, conv
    geometry or None, the argument's rows and columns)]), variables given by `key`."""
    steps = []
    for b in reversed(prefix):
        conv = op_name(b.value) == "relax.nn.conv2d"
        args = [a for a in (b.value.args[:1] if conv else b.value.args) if isinstance(a, relax.Var) and a in spatial]
        steps.append((key(b.var), [(key(a), _conv_geometry(b.value) if conv else None, _hw(a)) for a in args]))
    return steps


def _arg_regions(args, region: Region) -> list:
    """(argument, the region of it read) for `region` of a step's result."""
    return [(arg, region if geometry is None else _clipped(_conv_input(region, *geometry), hw))
            for arg, geometry, hw in args]


def _regions(steps, out, region: Region) -> dict:
    """Each prefix value (and the input) -> the region of it that `region` of the cut needs."""
    need = {out: region}
    for result, args in steps:
        for arg, want in _arg_regions(args, need[result]):
            need[arg] = want.union(need.get(arg))
    return need


def tile_regions(func: relax.Function, cut: Cut, grids) -> dict[tuple[int, int], list[dict[str, Region]]]:
    """For each (rows, cols) in `grids`, for each tile of that grid over `cut`: value name ->
    the region computed (the input's included): what a tile costs in memory and in
    recomputed halo. (On names and integers: the grid search calls it often.)"""
    bindings = list(func.body.blocks[0].bindings)
    x = func.params[0]
    members = _members(bindings[:cut.index + 1], x)
    steps = _steps([b for b in bindings[:cut.index + 1] if b.var in members], members | {x}, key=lambda v: v.name)
    return {(rows, cols): [_regions(steps, cut.name, Region(r0, r1, c0, c1))
                           for r0, r1 in _split(cut.shape[2], rows) for c0, c1 in _split(cut.shape[3], cols)]
            for rows, cols in grids}


def _emit_tile(bb, bindings, members, local, x, out_var, region: Region, suffix: str):
    """Emit the prefix for one tile of `out_var`; return the tile's variable."""
    prefix = [b for b in bindings if b.var in members]
    steps = _steps(prefix, members | {x})
    need = _regions(steps, out_var, region)
    tiles = {}  # var -> (tile var, its region)
    h, w = _hw(x)
    tiles[x] = (x, Region(0, h, 0, w))

    def read(arg, want: Region):
        var, have = tiles[arg]
        if have == want:
            return var
        if arg.same_as(x):  # a copy of its own: a slice fused into the stem would cost its micro-kernel
            kernel = bb.add_func(_read_kernel(tuple(int(d) for d in x.ty.shape), want, str(x.ty.dtype)), TILE_READ)
            shape = [int(x.ty.shape[0]), int(x.ty.shape[1]), want.rows, want.cols]
            return bb.emit(relax.call_tir(kernel, [x], relax.TensorType(shape, str(x.ty.dtype))),
                           name_hint=f"{arg.name}_{suffix}")
        return bb.emit(relax.op.strided_slice(var, axes=[2, 3], begin=[want.r0 - have.r0, want.c0 - have.c0],
                                              end=[want.r1 - have.r0, want.c1 - have.c0]),
                       name_hint=f"{arg.name}_{suffix}")

    copies = {}

    def copy(var):  # this tile's own copy of a local value
        if var not in copies:
            value = local[var].value
            inner = {a: copy(a) for a in relax.analysis.free_vars(value) if a in local}
            copies[var] = bb.emit(substitute_vars(value, inner) if inner else value, name_hint=f"{var.name}_{suffix}")
        return copies[var]

    for b, (_, reads) in zip(prefix, reversed(steps)):
        value = b.value
        wanted = dict(_arg_regions(reads, need[b.var]))
        args = [read(a, wanted[a]) if isinstance(a, relax.Var) and a in wanted
                else copy(a) if isinstance(a, relax.Var) and a in local else a for a in value.args]
        attrs = value.attrs
        if op_name(value) == "relax.nn.conv2d":
            attrs = _conv_attrs(attrs, _tile_padding(value, need[b.var], _hw(value.args[0])))
        call = relax.Call(value.op, args, attrs, value.ty_args)
        tiles[b.var] = (bb.emit(call, name_hint=f"{b.var.name}_{suffix}"), need[b.var])
    return tiles[out_var][0]


def _clipped(r: Region, hw: tuple[int, int]) -> Region:
    return Region(max(r.r0, 0), min(r.r1, hw[0]), max(r.c0, 0), min(r.c1, hw[1]))


def _conv_geometry(value) -> tuple[int, int, int, int, int, int]:
    """(kernel rows, kernel columns, row stride, column stride, top padding, left padding)."""
    kh, kw = (int(d) for d in list(value.args[1].ty.shape)[2:])
    sh, sw = (int(s) for s in value.attrs.strides)
    pad = [int(p) for p in value.attrs.padding]
    return kh, kw, sh, sw, pad[0], pad[1]


def _conv_input(region: Region, kh, kw, sh, sw, pt, pl) -> Region:
    """The input rows and columns (in unpadded coordinates, possibly past the border) that
    the conv reads for `region` of its output."""
    return Region(region.r0 * sh - pt, (region.r1 - 1) * sh - pt + kh, region.c0 * sw - pl, (region.c1 - 1) * sw - pl + kw)


def _tile_padding(value, region: Region, hw: tuple[int, int]) -> list[int]:
    """The conv's padding for one tile: only where the tile's window reaches past the
    whole input's border ([top, left, bottom, right])."""
    ideal = _conv_input(region, *_conv_geometry(value))
    return [max(0, -ideal.r0), max(0, -ideal.c0), max(0, ideal.r1 - hw[0]), max(0, ideal.c1 - hw[1])]


def _conv_attrs(attrs, padding: list[int]):
    return tvm.ir.make_node("relax.attrs.Conv2DAttrs", strides=attrs.strides, padding=padding,
                            dilation=attrs.dilation, groups=attrs.groups, data_layout=attrs.data_layout,
                            kernel_layout=attrs.kernel_layout, out_layout=attrs.out_layout,
                            out_dtype=attrs.out_dtype)


def _write(bb, whole, tile, out_var, r0: int, c0: int):
    """The cut with `tile` written at (r0, c0): a new buffer for the first tile, then in place."""
    sinfo = out_var.ty
    kernel = bb.add_func(_write_kernel(tuple(int(d) for d in sinfo.shape), tuple(int(d) for d in tile.ty.shape),
                                       str(sinfo.dtype), r0, c0, first=whole is None), TILE_WRITE)
    if whole is None:
        return bb.emit(relax.call_tir(kernel, [tile], sinfo), name_hint=f"{out_var.name}_tiles")
    return bb.emit(relax.op.call_tir_inplace(kernel, [whole, tile], [0], sinfo), name_hint=f"{out_var.name}_tiles")


def _read_kernel(shape, region: Region, dtype: str) -> tvm.tirx.PrimFunc:
    n, c = shape[0], shape[1]
    h, w, r0, c0 = region.rows, region.cols, region.r0, region.c0
    tile_shape = (n, c, h, w)

    @T.prim_func(private=True, s_tir=True)
    def read_tile(whole: T.Buffer(shape, dtype), tile: T.Buffer(tile_shape, dtype)):
        for i0, i1, i2, i3 in T.grid(n, c, h, w):
            with T.sblock("read"):
                v0, v1, v2, v3 = T.axis.remap("SSSS", [i0, i1, i2, i3])
                tile[v0, v1, v2, v3] = whole[v0, v1, v2 + r0, v3 + c0]

    return read_tile.with_attr("op_pattern", 8)  # opaque: FuseKernels leaves it alone


def _write_kernel(shape, tile_shape, dtype: str, r0: int, c0: int, first: bool) -> tvm.tirx.PrimFunc:
    n, c, h, w = tile_shape

    @T.prim_func(private=True, s_tir=True)
    def write_tile(tile: T.Buffer(tile_shape, dtype), whole: T.Buffer(shape, dtype)):
        for i0, i1, i2, i3 in T.grid(n, c, h, w):
            with T.sblock("write"):
                v0, v1, v2, v3 = T.axis.remap("SSSS", [i0, i1, i2, i3])
                whole[v0, v1, v2 + r0, v3 + c0] = tile[v0, v1, v2, v3]

    @T.prim_func(private=True, s_tir=True)
    def write_tile_inplace(whole: T.Buffer(shape, dtype), tile: T.Buffer(tile_shape, dtype)):
        for i0, i1, i2, i3 in T.grid(n, c, h, w):
            with T.sblock("write"):
                v0, v1, v2, v3 = T.axis.remap("SSSS", [i0, i1, i2, i3])
                whole[v0, v1, v2 + r0, v3 + c0] = tile[v0, v1, v2, v3]

    func = write_tile if first else write_tile_inplace
    return func.with_attr("op_pattern", 8)  # opaque: FuseKernels leaves it alone
