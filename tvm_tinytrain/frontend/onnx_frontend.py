"""ONNX frontend: a `.onnx` file -> `ImportedModel`.

Two stages. First the ONNX graph is rewritten in NumPy into the small form we can train,
and every op is checked there, before TVM sees it, so an error names the ONNX node:
constant sub-graphs (shape computations for Reshape, Pad widths, ...) are folded,
batch norm is folded into the conv before it, parameters torch's exporter named itself
(`onnx::Conv_27`) take their module's name from the node (`0.weight`), linear weights are
stored (out, in) as in torch, `Dropout` becomes `Identity` and `GlobalAveragePool` the
`ReduceMean` the torch frontend emits for `adaptive_avg_pool2d(x, 1)`. Then TVM's ONNX importer builds Relax with
the parameters kept as inputs, and `NormalizeONNX` turns the `call_tir` it emits for
`Clip` and `Pad` back into `R.clip` / `R.nn.pad`, which `Gradient` can differentiate.

ONNX is a protobuf: loading and folding it runs no code from the file (folding evaluates
standard ONNX ops with `onnx.reference`).

A hostile or broken file gets one `TinyTrainError` naming the node, never a traceback or a
huge allocation. Every shape is computed here, op by op, before TVM sees the graph, and
bounded (an MCU model is small; these limits are generous):

- the file: at most `MAX_FILE_BYTES` (64 MiB), `MAX_NODES` nodes and `MAX_INITIALIZERS`
  initializers (4,096 each), names in UTF-8 of at most `MAX_NAME_CHARS` (1,024)
  characters, no sparse tensors; initializers stored outside the file (torch's dynamo
  exporter writes `model.onnx.data`) only in a plain file beside the model, not a link,
  each the size its shape says, all of them within `MAX_FILE_BYTES` together, and no other
  tensor outside;
- constants (initializers and what folding computes): each at most `MAX_CONSTANT_BYTES`
  (64 MiB), all together `MAX_TOTAL_CONSTANT_BYTES` (256 MiB), rank <= `MAX_RANK` (8). A
  folded node's output size is computed by ONNX shape inference *before* it is evaluated,
  so a `ConstantOfShape` asking for 16 GiB is refused, not allocated; a node whose output
  size is not known in advance, or that holds a sub-graph (`Loop`, `If`, `Scan`), is not
  folded; ops costlier than their input size (`Conv`, `MatMul`, `Einsum`, ...) are folded
  only on small inputs (`MAX_COSTLY_FOLD_ELEMENTS`, 65,536 elements);
- activations: rank <= `MAX_RANK`, each dim in 1..`MAX_DIM` (65,536), at most
  `MAX_ACTIVATION_ELEMENTS` (2^24) elements each and `MAX_TOTAL_ACTIVATION_ELEMENTS` (2^26)
  all together;
- parameters: real floating point, finite in float32.

TVM's importer and the passes after it are then a safety net: anything they raise still
becomes a `TinyTrainError` naming that stage.
"""

from __future__ import annotations

import ast
import contextlib
import io
import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import tvm
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from ..errors import TinyTrainError, UnsupportedOpError, brief, unsupported_ops_error
from ..passes.normalize_onnx import NormalizeONNX
from .imported import ImportedModel

# The ops a model may still contain once its constant sub-graphs are folded away.
SUPPORTED_OPS = (
    "Conv", "BatchNormalization", "Relu", "Clip", "Add", "AveragePool", "MaxPool",
    "GlobalAveragePool", "ReduceMean", "Flatten", "Reshape", "Gemm", "MatMul", "Dropout",
    "Identity", "Pad",
    # MobileNetV3 / EfficientNet-lite: activations, the squeeze-excitation gate, scalar
    # arithmetic, channel concatenation
    "Sigmoid", "HardSigmoid", "HardSwish", "Mul", "Sub", "Div", "Concat",
)
SHAPE_OPS = ("Constant", "Shape", "Gather", "Unsqueeze", "Concat")
SUPPORTED_SUMMARY = (
    ", ".join(SUPPORTED_OPS)
    + "; and " + ", ".join(SHAPE_OPS) + " when they compute a constant (a Reshape's shape)"
)
OPSET = 13  # older models are converted up to it, so one Clip / Pad form is enough
_F32_MAX = float(np.finfo(np.float32).max)  # stands in for a missing Clip bound

# Bounds on what a file may ask for (see the module docstring).
MAX_FILE_BYTES = 64 << 20
MAX_NODES = 4096
MAX_INITIALIZERS = 4096
MAX_NAME_CHARS = 1024
MAX_RANK = 8
MAX_DIM = 1 << 16
MAX_ACTIVATION_ELEMENTS = 1 << 24
MAX_TOTAL_ACTIVATION_ELEMENTS = 1 << 26
MAX_CONSTANT_BYTES = 64 << 20
MAX_TOTAL_CONSTANT_BYTES = 256 << 20
MAX_COSTLY_FOLD_ELEMENTS = 1 << 16
# Ops whose evaluation costs about the size of their inputs and outputs: folded on any
# input within the constant limits. Any other op is folded only on small inputs.
_CHEAP_FOLD_OPS = frozenset((
    "Constant", "ConstantOfShape", "Shape", "Size", "Gather", "GatherElements", "GatherND",
    "Unsqueeze", "Squeeze", "Concat", "Reshape", "Flatten", "Slice", "Split", "Transpose",
    "Expand", "Tile", "Range", "Cast", "CastLike", "Identity", "Where", "Pad", "Dropout",
    "Add", "Sub", "Mul", "Div", "Pow", "Neg", "Abs", "Sqrt", "Reciprocal", "Exp", "Log",
    "Floor", "Ceil", "Round", "Sign", "Min", "Max", "Mean", "Sum", "Clip", "Relu", "Sigmoid",
    "Tanh", "Erf", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And",
    "Or", "Xor", "Mod", "IsNaN", "IsInf", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin",
    "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ArgMax", "ArgMin",
    "QuantizeLinear", "DequantizeLinear",
))
# Node inputs that hold integers (shapes, widths, axes), by op; every other constant input
# of a supported op is a parameter or bound and must be a finite real float.
_INT_INPUTS = {"Reshape": (1,), "Pad": (1, 3), "ReduceMean": (1,)}


def import_onnx(path: str | Path) -> ImportedModel:
    """Import a float ONNX classifier (one NCHW input with batch 1, one logits output)."""
    path = Path(path)
    model = _load(path)
    with np.errstate(all="ignore"):  # NaN, inf and overflow are checked for, not warned
        graph = _Graph(model, source=path.name)
        graph.fold_constants()
        graph.check_supported()
        graph.fold_batch_norm()
        graph.name_params_by_module()
        graph.normalize_ops()
    mod, params = _to_relax(graph.to_model(), path)
    _check_normal_form(mod, path.name)
    return ImportedModel(mod=mod, params=params, input_shape=graph.input_shape, source=str(path))


def _to_relax(model: onnx.ModelProto, path: Path) -> tuple[tvm.IRModule, dict[str, np.ndarray]]:
    """TVM's importer and NormalizeONNX on the checked graph.

    Every shape was checked before, so a failure here is a case those checks missed: it
    still becomes one `TinyTrainError` naming this stage and the op TVM was converting
    (which the importer prints to stdout, captured here), not a traceback.
    """
    printed = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
            warnings.simplefilter("ignore")  # the importer warns about every renamed input
            mod = from_onnx(model, keep_params_in_input=True)
        mod = tvm.transform.Sequential([
            NormalizeONNX(),
            relax.transform.CanonicalizeBindings(),
            relax.transform.DeadCodeElimination(),
        ])(mod)
        mod, values = relax.frontend.detach_params(mod)
        names = [p.name for p in mod["main"].params[1:]]
        params = {name: value.numpy() for name, value in zip(names, values.get("main", []))}
    except Exception as err:  # noqa: BLE001 - the safety net: TVM may raise anything
        converting = [line.split(",")[0].removeprefix("Error converting operator ")
                      for line in printed.getvalue().splitlines()
                      if line.startswith("Error converting operator ")]
        op = f" (converting a {_shown(converting[-1], 40)} node)" if converting else ""
        raise TinyTrainError(
            f"TVM's ONNX importer failed on {path.name}{op}: {type(err).__name__}: "
            f"{_first_line(err)}") from err
    return mod, params


def _load(path: Path) -> onnx.ModelProto:
    """Parse and check the file, bounded: size, counts and names before the ONNX checker."""
    if not path.is_file():
        raise TinyTrainError(f"{path}: no such file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise TinyTrainError(
            f"{path} is {size} bytes, more than the {MAX_FILE_BYTES >> 20} MiB an ONNX model "
            f"for a microcontroller may take here")
    try:
        # External data would read other files, of any size: refused below instead.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf DecodeError, ...: all say "not ONNX"
        raise TinyTrainError(f"{path} is not a valid ONNX model: {_first_line(err)}") from None
    _inline_external_data(model, path)
    _check_bounds(model, path)
    try:
        onnx.checker.check_model(model)
    except Exception as err:  # ValidationError, ...
        raise TinyTrainError(f"{path} is not a valid ONNX model: {_first_line(err)}") from None
    opset = _opset(model)
    if opset < OPSET:
        try:
            model = onnx.version_converter.convert_version(model, OPSET)
        except Exception as err:
            raise TinyTrainError(
                f"{path}: cannot convert the model from ONNX opset {opset} to {OPSET} "
                f"({_first_line(err)}); re-export it with opset_version >= {OPSET}") from None
    return model


def _inline_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Read the initializers stored outside the model file into it, as onnx's own loader
    would, but only from a plain file in the model's folder (no path, no link: the file
    names the place it is read from) and only the bytes their shapes need, within
    MAX_FILE_BYTES in all. Other tensors stored outside stay refused by `_check_bounds`."""
    budget = MAX_FILE_BYTES
    for tensor in model.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL and not tensor.external_data:
            continue
        what = f"initializer {_shown(tensor.name)}"
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if (not location or location in (".", "..") or Path(location).name != location or "\\" in location
                or "\0" in location):
            raise TinyTrainError(f"{path}: {what} is stored in {brief(location)}: external data must be a file "
                                 "beside the model, named without a folder")
        data = path.parent / location
        if data.is_symlink() or not data.is_file():
            raise TinyTrainError(f"{path}: {what} is stored in {brief(location)}, which is not a file beside "
                                 "the model (links are not followed)")
        try:
            itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
            offset, length = int(info.get("offset", 0)), int(info["length"]) if "length" in info else None
        except (KeyError, TypeError, ValueError):
            raise TinyTrainError(f"{path}: {what} has an unreadable type or external-data entry") from None
        nbytes = math.prod(int(d) for d in tensor.dims) * itemsize
        if any(int(d) < 0 for d in tensor.dims) or nbytes > budget or offset < 0 or length not in (None, nbytes):
            raise TinyTrainError(f"{path}: {what}: shape {list(tensor.dims)} and its external data (offset "
                                 f"{brief(info.get('offset'))}, length {brief(info.get('length'))}) disagree, or "
                                 f"exceed the {MAX_FILE_BYTES >> 20} MiB a model may take")
        with open(data, "rb") as f:
            f.seek(offset)
            raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise TinyTrainError(f"{path}: {what}: {location} ends before its {nbytes} bytes")
        budget -= nbytes
        tensor.raw_data = raw
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT


def _check_bounds(model: onnx.ModelProto, path: Path) -> None:
    """Counts, names and tensor storage a small model never exceeds (module docstring)."""
    g = model.graph
    for what, items, limit in (("nodes", g.node, MAX_NODES),
                               ("initializers", g.initializer, MAX_INITIALIZERS)):
        if len(items) > limit:
            raise TinyTrainError(f"{path} has {len(items)} {what}, more than the {limit} allowed")
    if len(g.sparse_initializer):
        raise TinyTrainError(f"{path}: sparse initializers are not supported")
    names = [*(n.name for n in g.node), *(o for n in g.node for o in (*n.input, *n.output)),
             *(t.name for t in g.initializer), *(v.name for v in (*g.input, *g.output)),
             *(n.op_type for n in g.node), *(n.domain for n in g.node),
             *(a.name for n in g.node for a in n.attribute)]
    # protobuf hands a string field that is not UTF-8 back as bytes (ONNX is proto2)
    raw = next((n for n in names if not isinstance(n, str)), None)
    if raw is not None:
        raise TinyTrainError(f"{path}: the name {brief(raw)} is not valid UTF-8")
    long = next((n for n in names if len(n) > MAX_NAME_CHARS), None)
    if long is not None:
        raise TinyTrainError(
            f"{path}: the name {brief(long)} is {len(long)} characters long, more than the "
            f"{MAX_NAME_CHARS} allowed")
    for what, tensor in _tensors(g):
        if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
            raise TinyTrainError(
                f"{path}: {what} is stored in an external file; only initializers may be (save with "
                f"save_as_external_data=False)")


def _tensors(graph: onnx.GraphProto):
    """(kind, TensorProto) for every tensor a graph holds: initializers and node attributes,
    sub-graphs included (folding would read an external one from any relative path)."""
    for tensor in graph.initializer:
        yield f"initializer {_shown(tensor.name)}", tensor
    for index, node in enumerate(graph.node):
        for a in node.attribute:
            sparse = [*([a.sparse_tensor] if a.HasField("sparse_tensor") else []),
                      *a.sparse_tensors]
            for tensor in [*([a.t] if a.HasField("t") else []), *a.tensors,
                           *(t for s in sparse for t in (s.values, s.indices))]:
                yield f"tensor {_shown(tensor.name)} of {_where(node, index)}", tensor
            for sub in [*([a.g] if a.HasField("g") else []), *a.graphs]:
                yield from _tensors(sub)


def _first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, bounded (it may quote a hostile file)."""
    try:
        text = str(err).strip()
    except Exception:  # noqa: BLE001 - a message that cannot be shown must not hide the error
        text = ""
    line = text.splitlines()[0].strip() if text else type(err).__name__
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in line[:limit])
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _shown(name: str, limit: int = 80) -> str:
    """A name from the file as a message shows it: as is when short and printable, else
    the bounded, escaped `brief` of it."""
    if isinstance(name, str) and len(name) <= limit and name.isprintable():
        return name
    return brief(name, limit)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _where(node: onnx.NodeProto, index: int) -> str:
    output = node.output[0] if node.output else ""
    name = _shown(node.name) if node.name else f"#{index} (output {brief(output)})"
    return f"{_shown(node.op_type, 40)} node {name}"


class _ShapeError(Exception):
    """Why a node's inputs do not fit it; `check_supported` adds the node and raises a
    `TinyTrainError` (never escapes this module)."""


def _activation_problem(shape) -> str | None:
    """Why an activation of this shape is outside the bounds (module docstring), or None."""
    if len(shape) > MAX_RANK:
        return f"rank {len(shape)} is more than {MAX_RANK}"
    bad = next((d for d in shape if not 1 <= d <= MAX_DIM), None)
    if bad is not None:
        return f"dimension {bad} is outside 1..{MAX_DIM}"
    if math.prod(shape) > MAX_ACTIVATION_ELEMENTS:
        return f"{math.prod(shape)} elements, more than {MAX_ACTIVATION_ELEMENTS}"
    return None


def _reshape(x: list[int], target: np.ndarray, allowzero: int) -> list[int]:
    """ONNX Reshape's output shape: one -1 at most, 0 copies the input's dim."""
    if target.ndim != 1 or target.size > MAX_RANK:
        raise _ShapeError(f"the target shape must be a list of at most {MAX_RANK} dims, got "
                          f"one of shape {brief(target.shape)}")
    shown = brief([int(d) for d in target])
    out = []
    for i, d in enumerate(int(d) for d in target):
        if d == 0 and not allowzero:
            if i >= len(x):
                raise _ShapeError(f"target shape {shown}: its 0 at position {i} copies a "
                                  f"dimension the input of shape {brief(x)} does not have")
            d = x[i]
        out.append(d)
    if out.count(-1) > 1 or any(d < -1 for d in out):
        raise _ShapeError(f"target shape {shown} has more than one -1 or a negative dim")
    known, size = math.prod(d for d in out if d != -1), math.prod(x)
    if -1 in out and known and size % known == 0:
        out[out.index(-1)] = size // known
    if math.prod(out) != size or -1 in out:
        raise _ShapeError(f"cannot reshape the input of shape {brief(x)} ({size} elements) "
                          f"into {shown}")
    return out


def _pad(x: list[int], pads: np.ndarray, axes: np.ndarray | None) -> list[int]:
    """ONNX Pad's output shape (widths checked non-negative before)."""
    rank = len(x)
    if (axes is not None and axes.size > rank) or pads.size > 2 * rank:
        raise _ShapeError(f"{pads.size} pad widths given for an input of rank {rank}")
    axes = list(range(rank)) if axes is None else [int(a) for a in np.ravel(axes)]
    if any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) != len(axes):
        raise _ShapeError(f"Pad axes {brief(axes)} are out of range or repeated for an input "
                          f"of rank {rank}")
    if pads.ndim != 1 or pads.size != 2 * len(axes):
        raise _ShapeError(f"{pads.size} pad widths given for {len(axes)} axes (needs "
                          f"{2 * len(axes)})")
    out = list(x)
    for k, axis in enumerate(axes):
        out[axis % rank] += int(pads[k]) + int(pads[k + len(axes)])
    return out


class _Graph:
    """The ONNX graph being rewritten: nodes in order and the constant tensors by name."""

    def __init__(self, model: onnx.ModelProto, source: str):
        self.source = source
        self.opset, self.ir_version = _opset(model), model.ir_version
        g = model.graph
        self.consts, self.const_bytes = {}, 0
        for tensor in g.initializer:
            self._add_const(tensor.name, self._initializer(tensor),
                            f"initializer {_shown(tensor.name)}")
        self.nodes = list(g.node)
        self.value_info = {v.name: v for v in [*g.input, *g.output]}  # more: _infer_shapes
        self._inferred_with = -1  # how many constants the last _infer_shapes knew
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1 or len(g.output) != 1:
            raise TinyTrainError(
                f"{source}: expected one input and one output (logits), got "
                f"{len(inputs)} inputs and {len(g.output)} outputs")
        self.input, self.output = inputs[0], g.output[0]
        self.input_shape = self._check_input()

    def _initializer(self, tensor: onnx.TensorProto) -> np.ndarray:
        """The initializer's array, its declared size bounded before it is decoded."""
        where = f"{self.source}: initializer {_shown(tensor.name)}"
        dims = list(tensor.dims)
        if len(dims) > MAX_RANK or any(d < 0 for d in dims):
            raise TinyTrainError(f"{where} has invalid or too many dimensions {brief(dims)} "
                                 f"(rank at most {MAX_RANK})")
        try:
            itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        except Exception:  # noqa: BLE001 - an unknown data_type number
            raise TinyTrainError(f"{where} has an unknown data type {tensor.data_type}") from None
        if math.prod(dims) * itemsize > MAX_CONSTANT_BYTES:
            raise TinyTrainError(
                f"{where} has shape {brief(dims)}: {math.prod(dims) * itemsize} bytes, more "
                f"than the {MAX_CONSTANT_BYTES >> 20} MiB allowed for one tensor")
        try:
            return numpy_helper.to_array(tensor)
        except Exception as err:  # data of the wrong length for its dims, ...
            raise TinyTrainError(
                f"{where}: its data does not match its shape {brief(dims)} and type "
                f"({_first_line(err)})") from None

    def _add_const(self, name: str, value, where: str) -> None:
        """Keep a constant, bounded one by one and in total (module docstring)."""
        if not isinstance(value, np.ndarray):
            raise TinyTrainError(
                f"{self.source}: {where} gives a {type(value).__name__}, not a tensor")
        if value.ndim > MAX_RANK or value.nbytes > MAX_CONSTANT_BYTES:
            raise TinyTrainError(
                f"{self.source}: {where} gives a constant of shape {brief(value.shape)}, more "
                f"than rank {MAX_RANK} or {MAX_CONSTANT_BYTES >> 20} MiB")
        self.const_bytes += value.nbytes - (self.consts[name].nbytes if name in self.consts else 0)
        if self.const_bytes > MAX_TOTAL_CONSTANT_BYTES:
            raise TinyTrainError(
                f"{self.source}: {where}: the model's constants take more than "
                f"{MAX_TOTAL_CONSTANT_BYTES >> 20} MiB in total")
        self.consts[name] = value

    def _check_input(self) -> tuple[int, ...]:
        ty = self.input.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in ty.shape.dim]
        name = _shown(self.input.name)
        if ty.elem_type != TensorProto.FLOAT:
            raise TinyTrainError(f"{self.source}: input {name} must be float32")
        if len(dims) not in (2, 4) or None in dims or dims[0] != 1:
            shown = brief(["?" if d is None else d for d in dims])
            raise TinyTrainError(
                f"{self.source}: input {name} must be NCHW or (1, features) with a static shape "
                f"and batch 1, got {shown}")
        problem = _activation_problem(dims)
        if problem:
            raise TinyTrainError(f"{self.source}: input {name} of shape {brief(dims)}: {problem}")
        return tuple(dims)

    # ---------------------------------------------------------------- folding and checks

    def fold_constants(self) -> None:
        """Evaluate every node whose inputs are all known (and `Shape` of a static tensor).

        Each output's size is known before the node is evaluated (`_fold_sizes`), so
        folding never allocates more than the constant limits. Nodes holding a sub-graph
        are never evaluated (a `Loop` may run for ever): they stay, and are refused as
        unsupported ops, as are nodes of a custom op domain (which ONNX cannot evaluate).
        """
        kept = []
        for index, node in enumerate(self.nodes):
            if node.domain not in ("", "ai.onnx"):
                kept.append(node)
                continue
            if node.op_type == "Shape" and node.input[0] not in self.consts \
                    and self._static_shape(node.input[0]) is None:
                self._infer_shapes(kept + self.nodes[index:])  # now that more is constant
            feeds = self._feeds(node)
            if feeds is None or any(a.type in (onnx.AttributeProto.GRAPH,
                                               onnx.AttributeProto.GRAPHS)
                                    for a in node.attribute):
                kept.append(node)
                continue
            where = f"the constant {_where(node, index)}"
            self._fold_sizes(node, feeds, where)
            try:
                outs = ReferenceEvaluator(node, opsets={"": self.opset}).run(None, feeds)
            except Exception as err:  # noqa: BLE001 - onnx.reference may raise anything
                raise TinyTrainError(
                    f"{self.source}: cannot evaluate {where}: {_first_line(err)}") from None
            for name, out in zip(node.output, outs):
                if name:
                    self._add_const(name, out, where)
        self.nodes = kept

    def _fold_sizes(self, node: onnx.NodeProto, feeds: dict[str, np.ndarray], where: str):
        """Refuse to evaluate a node whose outputs would be too large, or of unknown size.

        ONNX shape inference (strict, with the small constant inputs as initializers so
        `ConstantOfShape`, `Expand`, `Tile`, `Range` ... see their values) gives the
        output shapes without computing them.
        """
        inputs, inits = [], []
        for name, value in feeds.items():
            try:
                elem = helper.np_dtype_to_tensor_dtype(value.dtype)
            except Exception:  # noqa: BLE001 - a dtype ONNX has no name for
                raise TinyTrainError(
                    f"{self.source}: {where}: input {_shown(name)} has the unsupported type "
                    f"{brief(str(value.dtype))}") from None
            if value.size <= 4096:
                inits.append(numpy_helper.from_array(np.array(value, order="C"), name))
            else:  # big inputs only by type: no value of theirs decides a shape
                inputs.append(helper.make_tensor_value_info(name, elem, value.shape))
        if node.op_type not in _CHEAP_FOLD_OPS and \
                sum(v.size for v in feeds.values()) > MAX_COSTLY_FOLD_ELEMENTS:
            raise TinyTrainError(
                f"{self.source}: {where} has {sum(v.size for v in feeds.values())} input "
                f"elements; {_shown(node.op_type, 40)} is evaluated on constants of at most "
                f"{MAX_COSTLY_FOLD_ELEMENTS} elements")
        model = helper.make_model(
            helper.make_graph([node], "fold", inputs, [], inits),
            opset_imports=[helper.make_opsetid("", self.opset)], ir_version=self.ir_version)
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        except Exception as err:  # noqa: BLE001 - InferenceError, ...
            raise TinyTrainError(
                f"{self.source}: cannot evaluate {where}: {_first_line(err)}") from None
        types = {v.name: v.type for v in inferred.graph.value_info}
        for name in node.output:
            if not name:
                continue
            ty = types.get(name)
            tensor = ty.tensor_type if ty is not None and ty.HasField("tensor_type") else None
            dims = list(tensor.shape.dim) if tensor is not None and tensor.HasField("shape") \
                else None
            if dims is None or len(dims) > MAX_RANK or \
                    any(not d.HasField("dim_value") or d.dim_value < 0 for d in dims) or \
                    tensor.elem_type in (TensorProto.STRING, TensorProto.UNDEFINED):
                raise TinyTrainError(
                    f"{self.source}: {where} computes a value whose size or type is not known "
                    f"before computing it (or is of rank above {MAX_RANK}, or a string); "
                    f"it is not evaluated")
            shape = [d.dim_value for d in dims]
            nbytes = math.prod(shape) * \
                helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
            if nbytes > MAX_CONSTANT_BYTES or self.const_bytes + nbytes > MAX_TOTAL_CONSTANT_BYTES:
                raise TinyTrainError(
                    f"{self.source}: {where} would compute a constant of shape {brief(shape)} "
                    f"({nbytes} bytes), more than the {MAX_CONSTANT_BYTES >> 20} MiB allowed "
                    f"for one tensor or {MAX_TOTAL_CONSTANT_BYTES >> 20} MiB for all")

    def _infer_shapes(self, nodes: list[onnx.NodeProto]) -> None:
        """ONNX shape inference, with the constants folded so far as initializers.

        Run again only once more constants are known, and with only the small constants'
        values (the big ones by type and shape), so a file of many `Shape` nodes costs
        each a pass over the nodes, not a copy of every weight."""
        if self._inferred_with == len(self.consts):
            return
        self._inferred_with = len(self.consts)
        used = {i for n in nodes for i in n.input}
        try:
            inits, typed = [], []
            for name, value in self.consts.items():
                if name not in used:
                    continue
                if value.size <= 4096:
                    inits.append(numpy_helper.from_array(value, name))
                else:
                    typed.append(helper.make_tensor_value_info(
                        name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))
            graph = helper.make_graph(nodes, "main", [self.input, *typed], [self.output], inits)
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                      ir_version=self.ir_version)
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 - shapes only help folding `Shape` nodes
            return
        self.value_info.update({v.name: v for v in model.graph.value_info})

    def _feeds(self, node: onnx.NodeProto) -> dict[str, np.ndarray] | None:
        names = [n for n in node.input if n]
        if node.op_type == "Shape" and names and names[0] not in self.consts:
            shape = self._static_shape(names[0])  # only the shape is read: no data needed
            return None if shape is None else {
                names[0]: np.broadcast_to(np.float32(0), shape)}
        if all(n in self.consts for n in names):
            return {n: self.consts[n] for n in names}
        return None

    def _static_shape(self, name: str) -> list[int] | None:
        """The shape ONNX inference found for an activation, if static and within bounds."""
        info = self.value_info.get(name)
        if info is None or not info.type.tensor_type.HasField("shape"):
            return None
        dims = info.type.tensor_type.shape.dim
        if not all(d.HasField("dim_value") for d in dims):
            return None
        shape = [d.dim_value for d in dims]
        return None if _activation_problem(shape) else shape

    def check_supported(self) -> None:
        """Every node: a supported op, with valid constants, used as we can train it, on
        tensors whose shapes fit (computed here with ONNX semantics, and bounded), so a
        mismatch names the node and the shapes instead of failing deep inside TVM.

        Ops we cannot train are all collected first and refused together, in graph order
        (`errors.unsupported_ops_error`); shapes are checked only once every op is one we
        support, since an unsupported node has no output shape to go on with."""
        problems, graph = [], self._producers_and_uses()
        for index, node in enumerate(self.nodes):
            problem = self._op_problem(node, index, graph)
            if problem:
                problems.append((_where(node, index), problem))
        if problems:
            raise unsupported_ops_error(self.source, problems, SUPPORTED_SUMMARY)
        shapes = {self.input.name: self.input_shape}
        total = math.prod(self.input_shape)
        for index, node in enumerate(self.nodes):
            where = f"{self.source}: {_where(node, index)}"
            ins = []
            for name in node.input:
                if name and name not in shapes and name not in self.consts:
                    raise TinyTrainError(
                        f"{where}: its input {_shown(name)} is not computed by an earlier "
                        f"supported node")
                ins.append(shapes[name] if name in shapes else
                           self.consts[name].shape if name else None)
            try:
                out = self._output_shape(node, ins)
            except _ShapeError as err:
                raise TinyTrainError(f"{where}: {err}") from None
            problem = _activation_problem(out)
            if problem:
                raise TinyTrainError(
                    f"{where}: its output would have shape {brief(out)}: {problem}")
            total += math.prod(out)
            if total > MAX_TOTAL_ACTIVATION_ELEMENTS:
                raise TinyTrainError(
                    f"{where}: the activations up to here have more than "
                    f"{MAX_TOTAL_ACTIVATION_ELEMENTS} elements in total")
            shapes[node.output[0]] = tuple(out)
        out = shapes.get(self.output.name)
        if out is None or len(out) != 2 or out[0] != 1:
            got = "a constant" if out is None else f"shape {brief(out)}"
            raise TinyTrainError(
                f"{self.source}: the model must return (1, num_classes) logits, got {got}")

    def _op_problem(self, node: onnx.NodeProto, index: int, graph) -> str | None:
        """Why this node's op cannot be trained, or None. A constant that is not what its
        op needs is a broken file, not an unsupported op: it raises at once."""
        if node.domain not in ("", "ai.onnx"):
            return f"ops of the custom domain {brief(node.domain)} are not supported"
        if node.op_type in SHAPE_OPS and node.op_type not in SUPPORTED_OPS:
            return (f"op {node.op_type} is supported only as part of a constant computation "
                    f"(such as a Reshape's target shape), but here it computes on the model's data")
        if node.op_type not in SUPPORTED_OPS:
            return f"op {_shown(node.op_type, 40)} is not supported for training"
        self._check_constants(node, f"{self.source}: {_where(node, index)}")
        if node.op_type == "BatchNormalization":
            producers, uses = graph
            problem = self._batch_norm_problem(node, producers, uses)
            if problem is None:  # once folded, its conv computes this output: a second
                producers[node.output[0]] = producers[node.input[0]]  # batch norm may follow
            return problem or self._attribute_problem(node)
        return self._attribute_problem(node)

    def _check_constants(self, node: onnx.NodeProto, where: str) -> None:
        """Integer inputs (shapes, widths, axes) must be integers; every other constant
        (weights, biases, statistics, bounds) a real float, finite in float32, and is
        stored as float32 from here on. A `Clip` bound of +-inf means no bound."""
        ints = _INT_INPUTS.get(node.op_type, ())
        for i, name in enumerate(node.input):
            if not name or name not in self.consts or (node.op_type == "Dropout" and i > 0):
                continue
            value = self.consts[name]
            if i in ints:
                if value.dtype.kind not in "iu":
                    raise TinyTrainError(
                        f"{where}: its input {_shown(name)} must hold integers, not "
                        f"{brief(str(value.dtype))}")
                continue
            if value.dtype.kind != "f":
                raise TinyTrainError(
                    f"{where}: parameter {_shown(name)} has type {brief(str(value.dtype))}; "
                    f"only real floating-point parameters (float16, float32, float64) are "
                    f"supported")
            with np.errstate(over="ignore", invalid="ignore"):
                as32 = value.astype(np.float32)
            if node.op_type == "Clip" and not np.isnan(value).any():
                as32 = np.clip(as32, -_F32_MAX, _F32_MAX)
            if not np.isfinite(as32).all():
                what = "values beyond float32's range" if np.isfinite(value).all() \
                    else "NaN or infinity"
                raise TinyTrainError(
                    f"{where}: parameter {_shown(name)} holds {what}; every parameter must be "
                    f"a finite float32")
            self.consts[name] = as32

    def _output_shape(self, node: onnx.NodeProto, ins: list) -> list[int]:
        """The output shape of a supported node under ONNX semantics, or `_ShapeError`."""
        op = node.op_type
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        names = list(node.input)

        def const(i: int) -> np.ndarray | None:
            return self.consts.get(names[i]) if i < len(names) and names[i] else None

        if not ins or ins[0] is None:
            raise _ShapeError("its first input is missing")
        x = [int(d) for d in ins[0]]
        if op in ("Relu", "Clip", "Dropout", "Identity", "Sigmoid", "HardSigmoid", "HardSwish"):
            return x
        if op in ("Add", "Sub", "Mul", "Div"):
            if len(ins) != 2 or ins[1] is None:
                raise _ShapeError("it needs two inputs")
            try:
                return list(np.broadcast_shapes(tuple(ins[0]), tuple(ins[1])))
            except ValueError:
                verb = {"Add": "add", "Sub": "subtract", "Mul": "multiply", "Div": "divide"}[op]
                raise _ShapeError(f"cannot {verb} tensors of shapes {brief(tuple(ins[0]))} and "
                                  f"{brief(tuple(ins[1]))}") from None
        if op == "Concat":
            shapes = [[int(d) for d in i] if i is not None else None for i in ins]
            axis = attrs.get("axis", 0)
            if len(x) != 4 or axis not in (1, -3) or any(s is None or len(s) != 4 or s[:1] + s[2:] != x[:1] + x[2:]
                                                          for s in shapes):
                raise _ShapeError(f"concatenates only NCHW tensors of equal N, H, W along channels (axis 1), "
                                  f"got axis {brief(axis)} and shapes {brief([tuple(s) if s else s for s in shapes])}")
            return [x[0], sum(s[1] for s in shapes), x[2], x[3]]
        if op == "BatchNormalization" and len(x) not in (2, 4):
            raise _ShapeError(f"expects a 4-D NCHW or a 2-D (N, features) input, got shape {brief(x)}")
        if op in ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean") and len(x) != 4:
            raise _ShapeError(f"expects a 4-D NCHW input, got shape {brief(x)}")
        if op == "Conv":
            w, group = const(1), attrs.get("group", 1)
            out_channels, group_channels = w.shape[:2]
            if group < 1 or group_channels * group != x[1] or out_channels % group:
                raise _ShapeError(
                    f"its input has {x[1]} channels, but its weight {_shown(names[1])} of shape "
                    f"{brief(w.shape)} with group={group} takes {group_channels * group} "
                    f"channels (the weight's shape is (out, in / group, kH, kW), and out must "
                    f"be divisible by group)")
            bias = const(2)
            if bias is not None and bias.shape != (out_channels,):
                raise _ShapeError(f"its bias {_shown(names[2])} has shape {brief(bias.shape)}, "
                                  f"not ({out_channels},)")
            kernel = [int(k) for k in attrs.get("kernel_shape", w.shape[2:])]
            if kernel != list(w.shape[2:]):
                raise _ShapeError(f"kernel_shape {brief(kernel)} does not match its weight's "
                                  f"shape {brief(w.shape)}")
            return [x[0], out_channels, *self._window(x, kernel, attrs, ceil=False)]
        if op in ("MaxPool", "AveragePool"):
            kernel = [int(k) for k in attrs["kernel_shape"]]
            spatial = self._window(x, kernel, attrs, ceil=bool(attrs.get("ceil_mode", 0)))
            pads = list(attrs.get("pads", [0, 0, 0, 0]))
            if any(p >= k for p, k in zip(pads, kernel * 2)):
                raise _ShapeError(f"pads {brief(pads)} must be smaller than the kernel "
                                  f"{brief(kernel)}")
            return [x[0], x[1], *spatial]
        if op == "BatchNormalization":
            for i, what in enumerate(("scale", "bias", "mean", "variance"), start=1):
                value = const(i)
                if value is None:
                    raise _ShapeError("batch norm statistics must be constant")
                if value.shape != (x[1],):
                    raise _ShapeError(f"its {what} {_shown(names[i])} has shape "
                                      f"{brief(value.shape)}, not ({x[1]},)")
            return x
        if op == "GlobalAveragePool":
            return [x[0], x[1], 1, 1]
        if op == "ReduceMean":
            return [x[0], x[1], 1, 1] if attrs.get("keepdims", 1) else [x[0], x[1]]
        if op == "Flatten":
            axis = attrs.get("axis", 1)
            if not -len(x) <= axis <= len(x):
                raise _ShapeError(f"axis {axis} is out of range for an input of rank {len(x)}")
            axis = axis + len(x) if axis < 0 else axis
            return [math.prod(x[:axis]), math.prod(x[axis:])]
        if op == "Reshape":
            return _reshape(x, const(1), attrs.get("allowzero", 0))
        if op == "Pad":
            return _pad(x, const(1), const(3))
        if op in ("Gemm", "MatMul"):
            w = const(1)
            trans_b = attrs.get("transB", 0) if op == "Gemm" else 0
            if w.ndim != 2 or len(x) < 2 or (op == "Gemm" and len(x) != 2):
                raise _ShapeError(f"expects a {'2-D' if op == 'Gemm' else 'batched'} input "
                                  f"and a 2-D weight, got shapes {brief(x)} and {brief(w.shape)}")
            k, n = (w.shape[1], w.shape[0]) if trans_b else w.shape
            if k != x[-1]:
                raise _ShapeError(
                    f"its input has {x[-1]} features, but its weight {_shown(names[1])} of "
                    f"shape {brief(w.shape)}{' (transB=1)' if trans_b else ''} takes {k}")
            return [*x[:-1], n]
        raise AssertionError(f"no shape rule for {op}")  # SUPPORTED_OPS and this must agree

    @staticmethod
    def _window(x: list[int], kernel: list[int], attrs: dict, ceil: bool) -> list[int]:
        """H and W out of a Conv or pool: ONNX's formula, kernel, strides, pads bounded."""
        strides = list(attrs.get("strides", [1, 1]))
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        auto_pad = attrs.get("auto_pad", b"NOTSET").decode(errors="replace")
        for what, values, count, low in (("kernel", kernel, 2, 1), ("strides", strides, 2, 1),
                                         ("pads", pads, 4, 0)):
            if len(values) != count or not all(low <= v <= MAX_DIM for v in values):
                raise _ShapeError(f"{what} {brief(values)} must be {count} values in "
                                  f"{low}..{MAX_DIM}")
        if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            raise _ShapeError(f"auto_pad {brief(auto_pad)} is not NOTSET, VALID, SAME_UPPER "
                              f"or SAME_LOWER")
        if auto_pad != "NOTSET":
            pads = [0, 0, 0, 0]
        padded = [*x[:2], x[2] + pads[0] + pads[2], x[3] + pads[1] + pads[3]]
        problem = _activation_problem(padded)
        if problem:
            raise _ShapeError(f"its padded input would have shape {brief(padded)}: {problem}")
        out = []
        for i in range(2):
            size, k, stride = padded[2 + i], kernel[i], strides[i]
            if auto_pad.startswith("SAME"):
                out.append(-(-x[2 + i] // stride))
                continue
            if size < k:
                raise _ShapeError(
                    f"its kernel {brief(kernel)} is larger than its input {brief(x[2:])} "
                    f"with padding {brief(pads)}")
            o = (-(-(size - k) // stride) if ceil else (size - k) // stride) + 1
            if ceil and (o - 1) * stride >= x[2 + i] + pads[i]:
                o -= 1  # the last window must start inside the input or its left padding
            out.append(o)
        return out

    def _attribute_problem(self, node: onnx.NodeProto) -> str | None:
        """Why this supported op is used in a way we cannot train, or None."""
        op, attrs = node.op_type, {a.name: helper.get_attribute_value(a) for a in node.attribute}
        inputs = [i if i else None for i in node.input]
        const = self.consts.get
        if op in ("Conv", "MaxPool", "AveragePool"):
            if any(d != 1 for d in attrs.get("dilations", [])):
                return f"dilation {list(attrs['dilations'])} is not supported (only 1)"
            if op == "Conv" and (const(inputs[1]) is None or const(inputs[1]).ndim != 4
                                 or (len(inputs) > 2 and inputs[2] and const(inputs[2]) is None)):
                return "only 2-D convolutions with constant weights and bias are supported"
            if op != "Conv" and len(attrs.get("kernel_shape", [])) != 2:
                return "only 2-D pooling is supported"
            if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
                return "MaxPool with an indices output is not supported"
        if op == "Clip" and any(i is not None and (const(i) is None or const(i).size != 1)
                                for i in inputs[1:]):
            return "Clip bounds must be constant scalars"
        if op == "Pad":
            if attrs.get("mode", b"constant") != b"constant":
                return f"only constant padding is supported, not {brief(attrs['mode'])}"
            if any(i is not None and const(i) is None for i in inputs[1:]):
                return "Pad widths and value must be constant"
            if (const(inputs[1]) < 0).any():
                return "negative Pad widths (cropping) are not supported"
        if op == "Reshape" and const(inputs[1]) is None:
            return "the target shape must be constant"
        if op == "HardSigmoid" and not all(isinstance(attrs.get(k, 0.0), float) and math.isfinite(attrs.get(k, 0.0))
                                           for k in ("alpha", "beta")):
            return f"alpha and beta must be finite numbers, got {brief(attrs.get('alpha'))}, {brief(attrs.get('beta'))}"
        if op in ("Mul", "Sub", "Div") and all(i in self.consts for i in inputs[:2]):
            return "both operands are constant (fold it before export)"
        if op == "ReduceMean":
            axes = attrs.get("axes") if len(inputs) < 2 else const(inputs[1])
            if axes is None or sorted(int(a) % 4 for a in np.ravel(axes)) != [2, 3]:
                return "only a mean over H and W (axes 2, 3) is supported"
        if op == "BatchNormalization" and attrs.get("training_mode", 0):
            return "batch norm in training mode is not supported; export the model in eval mode"
        if op in ("Gemm", "MatMul") and const(inputs[1]) is None:
            return "only a linear layer with a constant weight is supported (B must be constant)"
        if op == "MatMul" and const(inputs[1]).ndim != 2:
            return "only a 2-D weight is supported"
        if op == "Gemm":
            if attrs.get("transA", 0):
                return "transA=1 is not supported"
            if len(inputs) > 2 and inputs[2] is not None and const(inputs[2]) is None:
                return "the bias C must be constant"
        if op == "Dropout" and len(node.output) > 1 and node.output[1] in self._used_names():
            return "the dropout mask output is used"
        return None

    # ---------------------------------------------------------------- rewrites

    def fold_batch_norm(self) -> None:
        """y = gamma (conv(x) - mean) / sqrt(var + eps) + beta folded into W and b (a Conv's,
        or a Gemm's: BatchNorm1d after a Linear, as torch's TorchScript exporter writes it)."""
        for index, bn in enumerate(list(self.nodes)):
            if bn.op_type != "BatchNormalization":
                continue
            problem = self._batch_norm_problem(bn, *self._producers_and_uses())
            if problem:  # check_supported refused it already; kept for direct callers
                raise UnsupportedOpError(f"{self.source}: {_where(bn, index)}: {problem}")
            conv = self._producer(bn.input[0])
            gamma, beta, mean, var = (self.consts.get(n) for n in bn.input[1:5])
            eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
            if not (var + np.float32(eps) > 0).all():
                raise TinyTrainError(
                    f"{self.source}: {_where(bn, index)}: variance + epsilon must be positive "
                    f"(epsilon is {eps})")
            scale = gamma / np.sqrt(var + eps)
            w = self.consts[conv.input[1]]
            if conv.op_type == "Gemm" and not _attr(conv, "transB", 0):  # W is (in, out)
                weight = w * scale.reshape(1, -1)
            else:  # (out, in, ...) of a Conv, or (out, in) of a Gemm with transB=1
                weight = w * scale.reshape(-1, *[1] * (w.ndim - 1))
            has_bias = len(conv.input) > 2 and conv.input[2]
            bias = self.consts[conv.input[2]] if has_bias else np.zeros_like(mean)
            self.nodes.remove(bn)
            conv.output[0] = bn.output[0]
            self._set_const(conv, 1, weight)
            if not has_bias:
                del conv.input[2:]
                conv.input.append(bn.input[2])  # the conv bias takes the BN beta's name
            self._set_const(conv, 2, (bias - mean) * scale + beta)

    def _batch_norm_problem(self, bn: onnx.NodeProto, producers: dict, uses: dict) -> str | None:
        """Why this batch norm cannot be folded into a conv, or None (`producers` and `uses`
        from `_producers_and_uses`: one pass over the graph for all its batch norms)."""
        conv = producers.get(bn.input[0])
        if conv is None or conv.op_type not in ("Conv", "Gemm") or uses.get(bn.input[0], 0) != 1 \
                or bn.input[0] == self.output.name:
            return ("batch norm that does not directly follow a Conv or a Gemm (whose output it alone "
                    "uses) cannot be folded into it; only Conv or Gemm -> BatchNormalization is supported")
        if conv.op_type == "Gemm" and (_attr(conv, "alpha", 1.0) != 1.0 or _attr(conv, "beta", 1.0) != 1.0
                                       or conv.input[1] not in self.consts
                                       or (len(conv.input) > 2 and conv.input[2] not in self.consts)):
            return "batch norm after a Gemm is folded only into constant weights with alpha = beta = 1"
        if any(n not in self.consts for n in bn.input[1:5]):
            return "batch norm with non-constant statistics cannot be folded into its Conv"
        return None

    def _producers_and_uses(self) -> tuple[dict[str, onnx.NodeProto], dict[str, int]]:
        """Each name's first producing node, and how often nodes and the output read it."""
        producers, uses = {}, {self.output.name: 1}
        for node in self.nodes:
            for name in node.output:
                producers.setdefault(name, node)
            for name in node.input:
                uses[name] = uses.get(name, 0) + 1
        return producers, uses

    def name_params_by_module(self) -> None:
        """Parameters that torch's exporter named itself get their module's name.

        `torch.onnx.export` names a parameter it computed, such as a conv weight with its
        batch norm folded in by constant folding, `onnx::Conv_95` (TVM then drops the
        `onnx::`), and its dynamo form a weight it transposed for a MatMul `val_13`. The
        node keeps the module path, in its name (`/features/features.0/Conv` for
        `features.0`) or in its `pkg.torch.onnx.name_scopes` metadata (`['', 'fc',
        'linear']`), the path the file's other parameters are named after
        (`features.1.weight`). Such a Conv's, Gemm's or MatMul's weight and bias become
        `<path>.weight` and `<path>.bias`, the torch frontend's names, but only in a file
        where some other layer's weight follows that rule and none with its path in its name
        breaks it (dynamo's scopes may name the batch norm fused into a conv), and never
        over a used name.
        """
        layers = [(node, _module_path(node)) for node in self.nodes
                  if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1]
        layers = [(node, path) for node, path in layers if path]
        named = [(node, path) for node, path in layers if not _exporter_named(node.input[1])]
        if (not any(node.input[1] == f"{path}.weight" for node, path in named)
                or any(node.input[1] != f"{path}.weight" for node, path in named if _path_in_name(node.name))):
            return  # no evidence that this file names parameters by module path
        taken = set(self.consts) | self._used_names() | {o for n in self.nodes for o in n.output}
        for node, path in layers:
            for index, suffix in ((1, "weight"), (2, "bias")):
                old = node.input[index] if index < len(node.input) else ""
                new = f"{path}.{suffix}"
                if (_exporter_named(old) and old in self.consts and self._uses(old) == 1
                        and new not in taken):
                    self.consts[new] = self.consts.pop(old)
                    node.input[index] = new
                    taken.add(new)

    def normalize_ops(self) -> None:
        """Spell each op the way the torch frontend does (see the module docstring)."""
        for node in list(self.nodes):
            op = node.op_type
            if op == "Gemm":
                self._normalize_gemm(node)
            elif op == "MatMul":  # x @ B -> x @ permute_dims(W, [1, 0]), W = B.T
                self._set_const(node, 1, self.consts[node.input[1]].T)
                transposed = self._fresh_name(node.input[1] + "_T")
                self.nodes.insert(self.nodes.index(node), helper.make_node(
                    "Transpose", [node.input[1]], [transposed], perm=[1, 0]))
                node.input[1] = transposed
            elif op == "Add" and node.input[0] in self.consts and node.input[1] not in self.consts:
                node.input[0], node.input[1] = node.input[1], node.input[0]  # add(y, b)
            elif op == "Dropout":  # inference: the identity
                node.CopyFrom(helper.make_node("Identity", node.input[:1], node.output[:1],
                                               name=node.name))
            elif op == "GlobalAveragePool":  # torch: mean(x, axis=[-1, -2], keepdims=True)
                node.CopyFrom(self._reduce_mean(node, [-1, -2]))
            elif op == "Clip":  # both bounds present, so NormalizeONNX finds a two-sided clip
                bounds = list(node.input[1:3]) + [""] * (3 - len(node.input))
                for i, fill in ((1, -_F32_MAX), (2, _F32_MAX)):
                    if not bounds[i - 1]:
                        bounds[i - 1] = self._new_const(f"{node.output[0]}_bound{i}",
                                                        np.float32(fill))
                    elif self.consts[bounds[i - 1]].shape != ():  # a (1,) bound: a scalar
                        bounds[i - 1] = self._new_const(
                            f"{node.output[0]}_bound{i}", self.consts[bounds[i - 1]].reshape(()))
                del node.input[1:]
                node.input.extend(bounds)
        for node in self.nodes:  # the bias of x @ W.T + b: shape (out,)
            if node.op_type == "Add" and self._is_param(node, 1) and node.input[1] in self.consts:
                transpose = self._producer(self._producer(node.input[0]).input[1])
                out_features = self.consts[transpose.input[0]].shape[0]
                self._set_const(node, 1, self._as_bias(node, 1, out_features))
        if self._fresh_name("x") == "x":  # main(x, *params), as the contract spells it
            for node in self.nodes:
                node.input[:] = ["x" if i == self.input.name else i for i in node.input]
            self.input = helper.make_value_info("x", self.input.type)

    def _normalize_gemm(self, node: onnx.NodeProto) -> None:
        """alpha, beta, transB folded: y = x @ permute_dims(W, [1, 0]) + b, W (out, in)."""
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = self.consts[node.input[1]]
        weight = weight if attrs.get("transB", 0) else weight.T
        self._set_const(node, 1, weight * np.float32(attrs.get("alpha", 1.0)))
        if len(node.input) > 2 and node.input[2]:
            bias = self._as_bias(node, 2, weight.shape[0]) * np.float32(attrs.get("beta", 1.0))
            self._set_const(node, 2, bias)
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("transB", 1))

    def _as_bias(self, node: onnx.NodeProto, index: int, out_features: int) -> np.ndarray:
        bias = self.consts[node.input[index]]
        if not (bias.size == 1 or bias.size == out_features == bias.shape[-1]):
            raise UnsupportedOpError(
                f"{self.source}: {_where(node, self.nodes.index(node))}: a bias of shape "
                f"{brief(bias.shape)} is not one value per output feature ({out_features})")
        return np.broadcast_to(bias.reshape(-1), (out_features,))

    def _reduce_mean(self, node: onnx.NodeProto, axes: list[int]) -> onnx.NodeProto:
        if self.opset >= 18:  # axes moved from an attribute to an input
            axes_name = self._new_const(f"{node.output[0]}_axes", np.array(axes, np.int64))
            return helper.make_node("ReduceMean", [node.input[0], axes_name], node.output,
                                    name=node.name, keepdims=1)
        return helper.make_node("ReduceMean", node.input[:1], node.output, name=node.name,
                                axes=axes, keepdims=1)

    # ---------------------------------------------------------------- helpers

    def _producer(self, name: str) -> onnx.NodeProto | None:
        return next((n for n in self.nodes if name in n.output), None)

    def _used_names(self) -> set[str]:
        return {i for n in self.nodes for i in n.input} | {self.output.name}

    def _uses(self, name: str) -> int:
        return sum(list(n.input).count(name) for n in self.nodes) + (name == self.output.name)

    def _fresh_name(self, hint: str) -> str:
        taken = set(self.consts) | self._used_names() | {o for n in self.nodes for o in n.output}
        name, k = hint, 0
        while name in taken:
            k += 1
            name = f"{hint}_{k}"
        return name

    def _new_const(self, hint: str, value: np.ndarray) -> str:
        name = self._fresh_name(hint)
        self.consts[name] = np.asarray(value)
        return name

    def _set_const(self, node: onnx.NodeProto, index: int, value: np.ndarray) -> None:
        """Give node input `index` a new value, under the same name unless others use it."""
        name = node.input[index]
        with np.errstate(over="ignore", invalid="ignore"):
            value = np.ascontiguousarray(value, dtype=np.float32)
        if not np.isfinite(value).all():  # the inputs were finite: alpha, beta or BN made it so
            raise TinyTrainError(
                f"{self.source}: {_where(node, self.nodes.index(node))}: parameter "
                f"{_shown(name)} becomes NaN or infinite once alpha, beta or a batch norm is "
                f"folded into it")
        if self._uses(name) == 1:
            self.consts[name] = value
        else:
            node.input[index] = self._new_const(name, value)

    def to_model(self) -> onnx.ModelProto:
        """The rewritten graph: trainable tensors as initializers, other constants as nodes.

        Parameters are the inputs of Conv, Gemm, the Transpose of a MatMul weight and the
        bias Add after a MatMul, in order of first use (TVM keeps initializer order).
        """
        params, constants = [], []
        for node in self.nodes:
            for index, name in enumerate(node.input):
                if name not in self.consts or name in params or name in constants:
                    continue
                if self._is_param(node, index):
                    params.append(name)
                else:
                    constants.append(name)
        const_nodes = [
            helper.make_node("Constant", [], [name],
                             value=numpy_helper.from_array(self.consts[name], name))
            for name in constants]
        graph = helper.make_graph(
            const_nodes + self.nodes, "main", [self.input], [self.output],
            [numpy_helper.from_array(self.consts[name], name) for name in params])
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=self.ir_version)
        onnx.checker.check_model(model)  # a broken rewrite is our bug: fail loudly here
        return model

    def _is_param(self, node: onnx.NodeProto, index: int) -> bool:
        if node.op_type in ("Conv", "Gemm"):
            return index >= 1
        if node.op_type == "Transpose":
            return True
        if node.op_type == "Add" and index == 1:
            producer = self._producer(node.input[0])
            return producer is not None and producer.op_type == "MatMul"
        return False


def _attr(node: onnx.NodeProto, name: str, default):
    """A node attribute's value, or `default`."""
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _exporter_named(name: str) -> bool:
    """A name torch's exporters make up for a tensor they computed: `onnx::Conv_95`
    (TorchScript), `val_13` (dynamo)."""
    return name.startswith("onnx::") or (name.startswith("val_") and name[4:].isdigit())


def _module_path(node: onnx.NodeProto) -> str | None:
    """The module path torch's exporter keeps for a node, in its name (TorchScript) or in its
    `pkg.torch.onnx.name_scopes` metadata (dynamo); None when it has neither."""
    return _path_in_name(node.name) or _path_in_scopes(node)


def _path_in_name(name: str) -> str | None:
    """TorchScript's node names: `/5/c1/Conv` -> `5.c1`, `/features/features.1/c1/c1.0/Conv`
    -> `features.1.c1.0` (a container's item is spelled `<container>.<index>` after the
    container)."""
    parts = name.split("/")
    if len(parts) < 3 or parts[0] or not all(parts[1:-1]):
        return None
    path, previous = [], None
    for scope in parts[1:-1]:
        item = previous is not None and scope.startswith(previous + ".")
        path.append(scope[len(previous) + 1:] if item else scope)
        previous = scope
    return ".".join(path)


def _path_in_scopes(node: onnx.NodeProto) -> str | None:
    """The dynamo exporter's metadata: the innermost module of `['', 'fc', 'linear']`, `fc`."""
    text = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
    if not text or len(text) > MAX_NAME_CHARS:
        return None
    try:
        scopes = ast.literal_eval(text)  # a list of strings; literals only, never code
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not (isinstance(scopes, list) and len(scopes) >= 3 and all(isinstance(x, str) for x in scopes)):
        return None
    path = scopes[-2]
    return path if path and all(part.isidentifier() or part.isdigit() for part in path.split(".")) else None


def _check_normal_form(mod: tvm.IRModule, source: str) -> None:
    """What the passes rely on; a failure here is a bug in this frontend."""
    func = mod["main"]
    blocks = func.body.blocks
    if len(blocks) != 1 or not isinstance(blocks[0], relax.DataflowBlock):
        raise RuntimeError(f"{source}: main must be one dataflow block")
    call_tir = tvm.ir.Op.get("relax.call_tir")
    left = [b.value.args[0] for b in blocks[0].bindings
            if isinstance(b.value, relax.Call) and b.value.op.same_as(call_tir)]
    if left:
        raise RuntimeError(f"{source}: call_tir left after NormalizeONNX: {left}")
    out = func.ret_ty
    if not isinstance(out, relax.TensorType) or len(out.shape) != 2 or int(out.shape[0]) != 1:
        raise TinyTrainError(f"{source}: the model must return (1, num_classes) logits, got {out}")
