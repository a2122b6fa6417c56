"""ONNX frontend: a `.onnx` file -> `ImportedModel`.

Two stages. First the ONNX graph is rewritten in NumPy into the small form we can train,
and every op is checked there, before TVM sees it, so an error names the ONNX node:
constant sub-graphs (shape computations for Reshape, Pad widths, ...) are folded,
batch norm is folded into the conv before it, linear weights are stored (out, in) as in
torch, `Dropout` becomes `Identity` and `GlobalAveragePool` the `ReduceMean` the torch
frontend emits for `adaptive_avg_pool2d(x, 1)`. Then TVM's ONNX importer builds Relax with
the parameters kept as inputs, and `NormalizeONNX` turns the `call_tir` it emits for
`Clip` and `Pad` back into `R.clip` / `R.nn.pad`, which `Gradient` can differentiate.

ONNX is a protobuf: loading and folding it runs no code from the file (folding evaluates
standard ONNX ops with `onnx.reference`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import tvm
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from ..errors import TinyTrainError, UnsupportedOpError
from ..passes.normalize_onnx import NormalizeONNX
from .imported import ImportedModel

# The ops a model may still contain once its constant sub-graphs are folded away.
SUPPORTED_OPS = (
    "Conv", "BatchNormalization", "Relu", "Clip", "Add", "AveragePool", "MaxPool",
    "GlobalAveragePool", "ReduceMean", "Flatten", "Reshape", "Gemm", "MatMul", "Dropout",
    "Identity", "Pad",
)
SHAPE_OPS = ("Constant", "Shape", "Gather", "Unsqueeze", "Concat")
SUPPORTED_SUMMARY = (
    ", ".join(SUPPORTED_OPS)
    + "; and " + ", ".join(SHAPE_OPS) + " when they compute a constant (a Reshape's shape)"
)
OPSET = 13  # older models are converted up to it, so one Clip / Pad form is enough
_F32_MAX = float(np.finfo(np.float32).max)  # stands in for a missing Clip bound


def import_onnx(path: str | Path) -> ImportedModel:
    """Import a float ONNX classifier (one NCHW input with batch 1, one logits output)."""
    path = Path(path)
    model = _load(path)
    graph = _Graph(model, source=path.name)
    graph.fold_constants()
    graph.check_supported()
    graph.fold_batch_norm()
    graph.normalize_ops()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the importer warns about every renamed input
        mod = from_onnx(graph.to_model(), keep_params_in_input=True)
    mod = tvm.transform.Sequential([
        NormalizeONNX(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.DeadCodeElimination(),
    ])(mod)
    mod, values = relax.frontend.detach_params(mod)
    names = [p.name for p in mod["main"].params[1:]]
    params = {name: value.numpy() for name, value in zip(names, values.get("main", []))}
    _check_normal_form(mod, path.name)
    return ImportedModel(mod=mod, params=params, input_shape=graph.input_shape, source=str(path))


def _load(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise TinyTrainError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # protobuf DecodeError, ValidationError, ...: all say "not ONNX"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TinyTrainError(f"{path} is not a valid ONNX model: {first_line}") from None
    opset = _opset(model)
    if opset < OPSET:
        try:
            model = onnx.version_converter.convert_version(model, OPSET)
        except Exception as err:
            raise TinyTrainError(
                f"{path}: cannot convert the model from ONNX opset {opset} to {OPSET} ({err}); "
                f"re-export it with opset_version >= {OPSET}") from None
    return model


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _where(node: onnx.NodeProto, index: int) -> str:
    name = node.name or f"#{index} (output {node.output[0]!r})"
    return f"{node.op_type} node {name}"


class _Graph:
    """The ONNX graph being rewritten: nodes in order and the constant tensors by name."""

    def __init__(self, model: onnx.ModelProto, source: str):
        self.source = source
        self.opset, self.ir_version = _opset(model), model.ir_version
        g = model.graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.nodes = list(g.node)
        self.value_info = {v.name: v for v in [*g.input, *g.output]}  # more: _infer_shapes
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1 or len(g.output) != 1:
            raise TinyTrainError(
                f"{source}: expected one input and one output (logits), got "
                f"{len(inputs)} inputs and {len(g.output)} outputs")
        self.input, self.output = inputs[0], g.output[0]
        self.input_shape = self._check_input()

    def _check_input(self) -> tuple[int, ...]:
        ty = self.input.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in ty.shape.dim]
        if ty.elem_type != TensorProto.FLOAT:
            raise TinyTrainError(f"{self.source}: input {self.input.name!r} must be float32")
        if len(dims) != 4 or None in dims or dims[0] != 1:
            shown = ["?" if d is None else d for d in dims]
            raise TinyTrainError(
                f"{self.source}: input {self.input.name!r} must be NCHW with a static shape "
                f"and batch 1, got {shown}")
        return tuple(dims)

    # ---------------------------------------------------------------- folding and checks

    def fold_constants(self) -> None:
        """Evaluate every node whose inputs are all known (and `Shape` of a static tensor)."""
        kept = []
        for index, node in enumerate(self.nodes):
            if node.domain not in ("", "ai.onnx"):
                raise UnsupportedOpError(
                    f"{self.source}: {_where(node, index)} is from the custom op domain "
                    f"{node.domain!r}. Supported ops: {SUPPORTED_SUMMARY}")
            if node.op_type == "Shape" and node.input[0] not in self.consts \
                    and self._static_shape(node.input[0]) is None:
                self._infer_shapes(kept + self.nodes[index:])  # now that more is constant
            feeds = self._feeds(node)
            if feeds is None:
                kept.append(node)
                continue
            try:
                outs = ReferenceEvaluator(node, opsets={"": self.opset}).run(None, feeds)
            except Exception as err:
                raise TinyTrainError(
                    f"{self.source}: cannot evaluate the constant {_where(node, index)}: {err}"
                ) from None
            self.consts.update(zip(node.output, (np.asarray(o) for o in outs)))
        self.nodes = kept

    def _infer_shapes(self, nodes: list[onnx.NodeProto]) -> None:
        """ONNX shape inference, with the constants folded so far as initializers."""
        used = {i for n in nodes for i in n.input}
        inits = [numpy_helper.from_array(v, k) for k, v in self.consts.items() if k in used]
        graph = helper.make_graph(nodes, "main", [self.input], [self.output], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  ir_version=self.ir_version)
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:
            return  # shapes only help folding `Shape` nodes
        self.value_info.update({v.name: v for v in model.graph.value_info})

    def _feeds(self, node: onnx.NodeProto) -> dict[str, np.ndarray] | None:
        names = [n for n in node.input if n]
        if node.op_type == "Shape" and names and names[0] not in self.consts:
            shape = self._static_shape(names[0])  # only the shape is read: zeros will do
            return None if shape is None else {names[0]: np.zeros(shape, np.float32)}
        if all(n in self.consts for n in names):
            return {n: self.consts[n] for n in names}
        return None

    def _static_shape(self, name: str) -> list[int] | None:
        info = self.value_info.get(name)
        if info is None or not info.type.tensor_type.HasField("shape"):
            return None
        dims = info.type.tensor_type.shape.dim
        return [d.dim_value for d in dims] if all(d.HasField("dim_value") for d in dims) else None

    def check_supported(self) -> None:
        for index, node in enumerate(self.nodes):
            where = f"{self.source}: {_where(node, index)}"
            if node.op_type in SHAPE_OPS:
                raise UnsupportedOpError(
                    f"{where} is supported only as part of a constant computation (such as a "
                    f"Reshape's target shape), but here it computes on the model's data. "
                    f"Supported ops: {SUPPORTED_SUMMARY}")
            if node.op_type not in SUPPORTED_OPS:
                raise UnsupportedOpError(
                    f"{where}: op {node.op_type} is not supported for training. "
                    f"Supported ops: {SUPPORTED_SUMMARY}")
            problem = self._attribute_problem(node)
            if problem:
                raise UnsupportedOpError(f"{where}: {problem}")

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
                return f"only constant padding is supported, not {attrs['mode'].decode()!r}"
            if any(i is not None and const(i) is None for i in inputs[1:]):
                return "Pad widths and value must be constant"
            if (const(inputs[1]) < 0).any():
                return "negative Pad widths (cropping) are not supported"
        if op == "Reshape" and const(inputs[1]) is None:
            return "the target shape must be constant"
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
        """y = gamma (conv(x) - mean) / sqrt(var + eps) + beta folded into W and b."""
        for index, bn in enumerate(list(self.nodes)):
            if bn.op_type != "BatchNormalization":
                continue
            conv = self._producer(bn.input[0])
            if conv is None or conv.op_type != "Conv" or self._uses(bn.input[0]) != 1 \
                    or bn.input[0] == self.output.name:
                raise UnsupportedOpError(
                    f"{self.source}: {_where(bn, index)} does not directly follow a Conv "
                    f"(whose output it alone uses), so it cannot be folded into it; only "
                    f"Conv -> BatchNormalization is supported")
            gamma, beta, mean, var = (self.consts.get(n) for n in bn.input[1:5])
            if any(v is None for v in (gamma, beta, mean, var)):
                raise UnsupportedOpError(
                    f"{self.source}: {_where(bn, index)} has non-constant statistics")
            eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
            scale = gamma / np.sqrt(var + eps)
            weight = self.consts[conv.input[1]] * scale.reshape(-1, 1, 1, 1)
            has_bias = len(conv.input) > 2 and conv.input[2]
            bias = self.consts[conv.input[2]] if has_bias else np.zeros_like(mean)
            self.nodes.remove(bn)
            conv.output[0] = bn.output[0]
            self._set_const(conv, 1, weight)
            if not has_bias:
                del conv.input[2:]
                conv.input.append(bn.input[2])  # the conv bias takes the BN beta's name
            self._set_const(conv, 2, (bias - mean) * scale + beta)

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
                f"{self.source}: {node.op_type} node {node.name}: a bias of shape {bias.shape} "
                f"is not one value per output feature ({out_features})")
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
        value = np.ascontiguousarray(value, dtype=np.float32)
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
