"""PyTorch frontend: `torch.nn.Module` + example input -> `ImportedModel`.

Batch norm is folded into the conv or linear layer before it (torch.fx's fusion), the model is
exported with `torch.export`, every aten op is checked against what we can train (before
TVM sees it, so the error names the module, and lists every refused op at once), and TVM's
exported-program importer builds the Relax graph with parameters kept as inputs, renamed
to their `state_dict` names.
"""

from __future__ import annotations

import copy
import os
import re
import warnings

import numpy as np
import torch
import tvm
from tvm import relax
from tvm.relax.frontend.torch import from_exported_program

from ..errors import TinyTrainError, brief, unsupported_ops_error
from ..relax_utils import substitute_vars
from .imported import ImportedModel

# aten op -> what a user calls it; everything else is refused.
SUPPORTED_ATEN_OPS = {
    "conv2d": "Conv2d", "convolution": "Conv2d",
    "relu": "ReLU", "relu_": "ReLU",
    "relu6": "ReLU6", "hardtanh": "Hardtanh", "hardtanh_": "Hardtanh",
    "clamp": "clamp", "clamp_": "clamp",
    "add": "residual add", "add_": "residual add",
    "avg_pool2d": "AvgPool2d", "max_pool2d": "MaxPool2d",
    "adaptive_avg_pool2d": "AdaptiveAvgPool2d", "mean": "mean over H, W (global pool)",
    "flatten": "flatten", "reshape": "reshape", "view": "view", "_unsafe_view": "view",
    "linear": "Linear", "dropout": "Dropout", "dropout_": "Dropout",
    "pad": "F.pad (constant)", "constant_pad_nd": "F.pad (constant)",
    "batch_norm": "BatchNorm (after a conv or a linear layer)",
    "_native_batch_norm_legit_no_training": "BatchNorm (after a conv or a linear layer)",
    # MobileNetV3 / EfficientNet-lite: TVM writes each as adds, clips, multiplies, divides and
    # a sigmoid, all of which Relax differentiates
    "hardswish": "Hardswish", "hardswish_": "Hardswish",
    "hardsigmoid": "Hardsigmoid", "hardsigmoid_": "Hardsigmoid",
    "sigmoid": "Sigmoid", "sigmoid_": "Sigmoid", "silu": "SiLU", "silu_": "SiLU",
    "mul": "multiply (a squeeze-excitation gate, a scalar)", "mul_": "multiply (a squeeze-excitation gate, a scalar)",
    "sub": "subtract", "sub_": "subtract", "div": "divide", "div_": "divide",
    "cat": "torch.cat (channels)", "concat": "torch.cat (channels)",
}
# Users read the supported list in error messages: one entry per user-facing op.
SUPPORTED_SUMMARY = ", ".join(sorted(set(SUPPORTED_ATEN_OPS.values())))
_BATCH_NORM = {"batch_norm", "_native_batch_norm_legit_no_training"}


def import_torch(model: torch.nn.Module, example_input: torch.Tensor, *, source: str | None = None) -> ImportedModel:
    """Import a float CNN for training. The model itself is left untouched."""
    if example_input.dim() not in (2, 4) or example_input.shape[0] != 1:
        raise TinyTrainError(f"example input must be NCHW (images, spectrograms) or (1, features) with batch 1, "
                             f"got shape {tuple(example_input.shape)}")
    source = source or type(model).__name__
    model = _fold_batch_norm(copy.deepcopy(model).eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's pytree deprecations, not the user's
        try:
            exported = torch.export.export(model, (example_input,))
        except Exception as err:  # torch's own message says what it could not trace
            raise TinyTrainError(f"torch.export could not export the model: {err}") from None
        _check_supported(exported, source)
        mod = from_exported_program(exported, keep_params_as_input=True, unwrap_unit_return_tuple=True)
    mod, params = _rename_params(mod, exported)
    out = mod["main"].ret_ty
    if not isinstance(out, relax.TensorType) or len(out.shape) != 2:
        raise TinyTrainError(f"the model must return one (1, num_classes) tensor of logits, got {out}")
    return ImportedModel(mod=mod, params=params, input_shape=tuple(example_input.shape),
                         source=source)


def _fold_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every conv -> batch-norm pair; a model fx cannot trace is kept as it is."""
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if not has_bn:
        return model
    from torch.fx.experimental.optimization import fuse
    try:
        return fuse(model)
    except Exception:
        return model  # _check_supported then refuses any batch norm it cannot fold


def _module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "<top level>"
    path, cls = list(stack.values())[-1]
    cls_name = getattr(cls, "__name__", str(cls)).rsplit(".", 1)[-1]
    return f"{path or '<top level>'} ({cls_name})"


_TORCH_DIR = os.path.dirname(torch.__file__)


def _user_code(node: torch.fx.Node) -> str:
    """The user's source line that made this op (` at net.py:12: x * gate`), or "" when the
    op comes from inside a torch module (the module path already names it: `Hardswish`)."""
    frames = re.findall(r'File "([^"]*)", line (\d+), in [^\n]*\n\s*([^\n]*)',
                        node.meta.get("stack_trace") or "")
    if not frames or os.path.abspath(frames[-1][0]).startswith(_TORCH_DIR + os.sep):
        return ""
    file, line, code = frames[-1]
    return f" at {os.path.basename(file)}:{line}: {code.strip()}"


def _check_supported(exported: torch.export.ExportedProgram, source: str) -> None:
    """Every op we cannot train, in graph order, in one `UnsupportedOpError`."""
    problems = []
    for node in exported.graph.nodes:
        if node.op != "call_function":
            continue
        problem = _op_problem(node)
        if problem:
            problems.append((_module_path(node), problem))
    if problems:
        raise unsupported_ops_error(source, problems, SUPPORTED_SUMMARY)


def _op_problem(node: torch.fx.Node) -> str | None:
    """Why this aten op cannot be trained, or None."""
    name = getattr(node.target, "_opname", None) or getattr(node.target, "__name__", str(node.target))
    name = name.split(".")[0]
    if name in _BATCH_NORM:
        return "batch norm that does not follow a conv or a linear layer cannot be folded for training"
    if name not in SUPPORTED_ATEN_OPS:
        return f"unsupported operator '{name}' (aten.{name}){_user_code(node)}"
    if name in ("conv2d", "convolution"):
        dilation = node.args[5] if len(node.args) > 5 else [1, 1]
        if any(d != 1 for d in dilation):
            return f"conv2d with dilation {list(dilation)}: only dilation 1 is supported"
    if name == "pad" and (len(node.args) > 2 and node.args[2] not in ("constant",)):
        return f"F.pad with mode '{node.args[2]}': only constant padding is supported"
    if name == "mean":
        dims = sorted(d % 4 for d in node.args[1])
        if dims != [2, 3]:
            return (f"mean over dims {list(node.args[1])}{_user_code(node)}: only the global "
                    f"pool (mean over H and W) is supported")
    return None


def _rename_params(mod: tvm.IRModule, exported: torch.export.ExportedProgram):
    """Name the Relax parameters after the model's `state_dict` keys."""
    func = mod["main"]
    values = func.attrs["params"]
    specs = [s for s in exported.graph_signature.input_specs if s.kind.name in ("PARAMETER", "BUFFER")]
    # Buffers that no op uses (e.g. num_batches_tracked) are dropped by the importer.
    by_placeholder = {s.arg.name: s.target for s in specs}
    relax_params = list(func.params[1:])
    if len(relax_params) != len(values):
        raise TinyTrainError("internal: TVM's importer returned params and values of different lengths")
    mapping, new_params, params = {}, [func.params[0]], {}
    for var, value in zip(relax_params, values):
        name = by_placeholder.get(var.name, var.name)
        new_var = relax.Var(name, var.ty)
        mapping[var] = new_var
        new_params.append(new_var)
        params[name] = value.numpy().astype(np.float32)
    new_func = relax.Function(new_params, substitute_vars(func.body, mapping), func.ret_ty)
    new_func = new_func.with_attr("global_symbol", "main").with_attr("num_input", 1)
    return tvm.IRModule({"main": new_func}), params


def load_weights(model: torch.nn.Module, weights: str) -> None:
    """Load a state_dict file (`torch.load(weights_only=True)`: never unpickled), refusing
    anything but a dict of dense CPU tensors with exactly the model's names and shapes,
    finite real floats where the model has floats, BatchNorm variances >= 0."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types on bad files
        text = " ".join(str(err).split())
        raise TinyTrainError(f"cannot load weights {weights} (only plain tensors are accepted): "
                             f"{type(err).__name__}: {text[:300]}") from None
    if not isinstance(state, dict):
        raise TinyTrainError(f"weights {weights}: expected a state_dict (a dict of tensors), "
                             f"got {type(state).__name__}")
    expected = model.state_dict()
    names = lambda keys: brief(sorted(keys, key=str), 300)  # noqa: E731
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        raise TinyTrainError(f"weights {weights} do not match the model: missing {names(missing)}, "
                             f"unexpected {names(extra)}")
    for name, value in state.items():
        want = expected[name]
        if (not isinstance(value, torch.Tensor) or value.layout != torch.strided
                or value.is_quantized or value.device.type != "cpu"):
            raise TinyTrainError(f"weights {weights}: {brief(name)} is a {type(value).__name__}, "
                                 "not a plain dense tensor")
        if value.shape != want.shape:
            raise TinyTrainError(f"weights {weights}: {brief(name)} has shape {tuple(value.shape)}, "
                                 f"the model's is {tuple(want.shape)}")
        if want.is_floating_point() and (not value.is_floating_point() or value.is_complex()):
            raise TinyTrainError(f"weights {weights}: {brief(name)} has dtype {value.dtype}, "
                                 "expected a real float tensor")
        if value.dtype != want.dtype and not want.is_floating_point():
            raise TinyTrainError(f"weights {weights}: {brief(name)} has dtype {value.dtype}, "
                                 f"the model's is {want.dtype}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise TinyTrainError(f"weights {weights}: {brief(name)} holds NaN or Inf values")
        if str(name).endswith("running_var") and bool((value < 0).any()):
            raise TinyTrainError(f"weights {weights}: {brief(name)} holds negative variances")
    try:
        model.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - anything the checks above did not foresee
        text = " ".join(str(err).split())
        raise TinyTrainError(f"weights {weights} do not fit the model: {text[:300]}") from None
