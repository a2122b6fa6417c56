"""Post-training quantization: a float model -> the same kind of int8 graph as the zoo's.

Weights per output channel, symmetric (`W_q = rint(W / s_W)`, `s_W = max|W| / 127`);
biases int32 (`b_q = rint(b / (s_W s_x))`); activations per tensor, asymmetric, from the
minimum and maximum seen on calibration samples (the range always contains 0). A ReLU or
clip that follows a conv, a linear or an add is folded into that layer's output range, as
tiny-training's models do (its int8 clamp is the activation). BN is already folded by the
frontends. The result computes with the int8 operations of `frontend/int8_ops.py`, so it
trains with QAS exactly like the zoo models.

Supported (the float frontends' normal form): conv2d + bias, linear, residual add, ReLU,
ReLU6 / clip, max pool, average pooling as a global mean, reshape / flatten; and every
elementwise function of int8 tensors, as MobileNetV3 and EfficientNet-lite use them
(hard-swish, hard-sigmoid, sigmoid, SiLU, the squeeze-excitation multiply, scalar
arithmetic, channel concatenation). Those run as tiny-training runs its residual add: each
int8 input dequantized, `(q - zero) * scale`, the ops in float32 as the float graph has
them, and the result quantized, `sat(rint(y / scale) + zero)`. A chain of such ops (the
five ops of a hard-swish) is one region, computed in float32 and quantized at its end; a
value that more than one op reads is quantized, and every reader reads the int8 value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from .errors import unsupported_ops_error
from .frontend.imported import ImportedModel
from .layers import bias_operand
from .frontend.int8_ops import dequantize, quantize, quantized_add, quantized_conv, quantized_linear

ACTIVATIONS = {"relax.nn.relu", "relax.clip"}
QUANTIZABLE = ("conv2d and linear layers, residual add, ReLU/ReLU6/clip after them, max pool, "
               "global average pool, reshape/flatten, channel concat, elementwise functions of int8 "
               "tensors and constants (hardswish, hardsigmoid, sigmoid, SiLU, squeeze-excitation gates, "
               "add/subtract/multiply/divide, clip, ReLU)")
# computed in float32 between int8 tensors (see the module docstring)
ELEMENTWISE = {"relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.clip", "relax.nn.relu",
               "relax.sigmoid", "relax.minimum", "relax.maximum", "relax.concat"}


@dataclass(frozen=True)
class QParams:
    scale: float
    zero: int

    @staticmethod
    def from_range(lo: float, hi: float) -> "QParams":
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        scale = (hi - lo) / 255.0 if hi > lo else 1.0
        return QParams(float(np.float32(scale)), int(np.clip(np.rint(-128 - lo / scale), -128, 127)))


def post_training_quantize(model: ImportedModel, calibration: np.ndarray, logit_range: float = 8.0) -> ImportedModel:
    """Quantize `model` with activation ranges measured on `calibration` (N samples).

    The logits get a range of at least +-`logit_range`: a freshly initialised head has tiny
    outputs on the calibration data, and an output scale fitted to them would saturate as
    soon as training makes the logits confident (saturation also stops the gradient).
    For the same reason the layer computing the logits gets a weight range of at least
    `logit_range / x_max` (x_max: the largest magnitude its int8 input represents), so that
    one input at the top of its range can carry a logit across the logit range: a weight
    scale fitted to a fresh head's random weights (+-1/sqrt(features)) saturates as soon as
    training grows them, and a saturated weight's master copy gets no gradient again."""
    func = model.mod["main"]
    ranges = _activation_ranges(model, calibration)
    bindings = [b for block in func.body.blocks for b in block.bindings]
    producer = {b.var: b.value for b in bindings}
    out = func.body.body
    logit_vars = set()
    while True:  # the logits and the vars they alias
        lo, hi = ranges[out]
        ranges[out] = (min(lo, -logit_range), max(hi, logit_range))
        logit_vars.add(out)
        if not isinstance(producer.get(out), relax.Var):
            break
        out = producer[out]
    users: dict = {}
    for b in bindings:
        for v in relax.analysis.free_vars(b.value):
            users.setdefault(v, []).append(b.var)
    params = {p: model.params[p.name] for p in func.params[1:]}

    def op_name(expr):
        return getattr(getattr(expr, "op", None), "name", "") if isinstance(expr, relax.Call) else ""

    def chain_end(var):
        """Follow a layer's output through its bias add and a folded activation."""
        while len(users.get(var, [])) == 1:
            nxt = users[var][0]
            value = producer[nxt]
            if op_name(value) in ACTIVATIONS or (op_name(value) == "relax.add" and bias_operand(value, var, producer, params) is not None):
                var = nxt
            else:
                break
        return var

    def qparams(var) -> QParams:
        return QParams.from_range(*ranges[var])

    new_params: dict[str, np.ndarray] = {}
    scales: dict[str, np.ndarray] = {}
    new_vars: list[relax.Var] = []

    def param(name, value):
        var = relax.Var(name, relax.TensorType(value.shape, str(value.dtype)))
        new_params[name], _ = value, new_vars.append(var)
        return var

    x = relax.Var("x", func.params[0].ty)
    q_in = QParams.from_range(*ranges[func.params[0]])
    bb = relax.BlockBuilder()
    env: dict = {}   # float var -> (int8-valued expr, QParams)
    real: dict = {}  # float var -> float32 expr: an elementwise region's value, not yet quantized
    dequantized: dict = {}  # float var -> its int8 value dequantized, for elementwise readers

    def quantized(var):
        """`var`'s int8 value; a region's value is quantized (once) when first read as int8."""
        if var not in env:
            qv = qparams(var)
            env[var] = (quantize(bb, real[var], qv.scale, qv.zero), qv)
        return env[var]

    def as_real(arg):
        """An elementwise op's operand in float32: a region's value that only this op
        reads stays in float32 (fused); any other value is read as int8, dequantized."""
        if isinstance(arg, relax.Tuple):
            return relax.Tuple([as_real(f) for f in arg.fields])
        if not isinstance(arg, relax.Var):
            return arg  # a constant, a clip bound
        if arg in real and len(users[arg]) == 1:
            return real[arg]
        if arg not in dequantized:
            q, qv = quantized(arg)
            dequantized[arg] = dequantize(bb, q, qv.scale, qv.zero)
        return dequantized[arg]

    with bb.function("main", attrs={"num_input": 1}):
        with bb.dataflow():
            env[func.params[0]] = (quantize(bb, x, q_in.scale, q_in.zero), q_in)
            done, problems = set(), {}  # problems: place -> what cannot be quantized there
            for b in bindings:
                var, value, op = b.var, b.value, op_name(b.value)
                if var in done or (op in ("relax.permute_dims", "relax.reshape") and value.args[0] in params):
                    continue  # a linear's weight or a conv's bias: handled with their layer
                problem = _problem(value, op, lambda v: v in env or v in real)
                if problem:
                    place = problems.setdefault(f"after {_layer_before(var, producer, params)}", [])
                    place += [problem] * (problem not in place)
                    # stands in for the refused value, so that the rest of the graph is checked too
                    env[var] = next((env[a] for a in value.args if a in env), env[func.params[0]])
                    continue
                if op in ("relax.nn.conv2d", "relax.matmul"):
                    weight = value.args[1] if op == "relax.nn.conv2d" else producer[value.args[1]].args[0]
                    end = chain_end(var)
                    bias = _find_bias(var, end, producer, params, users)
                    xq, qx = quantized(value.args[0])
                    qy = qparams(end)
                    w = params[weight]
                    s_w = np.maximum(np.abs(w.reshape(w.shape[0], -1)).max(axis=1), 1e-12) / 127.0
                    if end in logit_vars:  # the head: room for the weights training will grow
                        x_max = qx.scale * max(128 + qx.zero, 127 - qx.zero)
                        s_w = np.maximum(s_w, logit_range / x_max / 127.0)
                    s_w = s_w.astype(np.float32)
                    w_q = np.clip(np.rint(w / s_w.reshape(-1, *[1] * (w.ndim - 1))), -127, 127).astype(np.int8)
                    b_real = params[bias] if bias is not None else np.zeros(w.shape[0], np.float32)
                    b_q = np.rint(b_real / (s_w.astype(np.float64) * qx.scale)).astype(np.int32)
                    wv = param(weight.name, w_q)
                    bname = bias.name if bias is not None else weight.name.rsplit(".", 1)[0] + ".bias"
                    bv = param(bname, b_q)
                    scales[weight.name] = s_w
                    scales[bname] = (s_w.astype(np.float64) * qx.scale).astype(np.float32)
                    es = (np.float64(qx.scale) * s_w.astype(np.float64) / np.float64(qy.scale)).astype(np.float32)
                    if op == "relax.nn.conv2d":
                        a = value.attrs
                        out = quantized_conv(bb, xq, wv, bv, qx.zero, es, qy.zero, strides=a.strides,
                                             padding=a.padding, groups=int(a.groups))
                    else:
                        out = quantized_linear(bb, xq, wv, bv, qx.zero, es, qy.zero)
                    env[end] = (out, qy)
                    done |= set(_chain_list(var, end, users))
                elif op == "relax.add" and all(a in env for a in value.args):  # a residual add
                    end = chain_end(var)
                    (a, qa), (c, qc) = env[value.args[0]], env[value.args[1]]
                    qy = qparams(end)
                    env[end] = (quantized_add(bb, a, qa.zero, qa.scale, c, qc.zero, qc.scale, qy.zero, qy.scale), qy)
                    done |= set(_chain_list(var, end, users))
                elif op in ELEMENTWISE:
                    real[var] = bb.emit(relax.Call(value.op, [as_real(a) for a in value.args], value.attrs))
                elif op in ("relax.nn.max_pool2d", "relax.reshape", "relax.flatten"):
                    src, qs = quantized(value.args[0])
                    new = relax.Call(value.op, [src, *value.args[1:]], value.attrs)
                    env[var] = (bb.emit(new), qs)
                elif op in ("relax.mean", "relax.nn.adaptive_avg_pool2d", "relax.nn.avg_pool2d"):
                    src, qs = quantized(value.args[0])
                    env[var] = (bb.emit(relax.op.round(relax.Call(value.op, [src, *value.args[1:]], value.attrs))), qs)
                elif isinstance(value, relax.Var):
                    env[var] = quantized(value)
            out_q, q_out = quantized(func.body.body)
            logits = bb.emit_output(x if problems else dequantize(bb, out_q, q_out.scale, q_out.zero))
        bb.emit_func_output(logits, params=[x, *new_vars])  # closed cleanly even when refused
    if problems:
        raise unsupported_ops_error(f"post-training quantization of {model.source}",
                                    [(where, "cannot quantize " + ", ".join(what)) for where, what in problems.items()],
                                    QUANTIZABLE, refused="places hold ops that cannot be quantized")
    return ImportedModel(mod=tvm.IRModule({"main": bb.get()["main"]}), params=new_params,
                         input_shape=model.input_shape, source=f"{model.source} (int8, post-training quantized)",
                         quant_scales=scales)


def _problem(value, op: str, is_activation) -> str | None:
    """Why this binding cannot be quantized (it is not a layer's chain, which the caller
    takes whole), or None. `is_activation(var)`: var is a computed tensor (not a parameter)."""
    if op == "relax.nn.avg_pool2d" and any(int(p) for p in value.attrs.padding):
        return "avg_pool2d with padding"
    if op == "relax.concat" and int(value.attrs.axis) not in (1, -3):
        return f"concat along axis {int(value.attrs.axis)} (channels only)"
    if op in ELEMENTWISE:
        operands = [f for a in value.args for f in (a.fields if isinstance(a, relax.Tuple) else [a])]
        if any(isinstance(a, relax.Var) and not is_activation(a) for a in operands):
            return f"{op.removeprefix('relax.')} of a parameter"
        return None
    if op in ("relax.nn.conv2d", "relax.matmul", "relax.nn.max_pool2d", "relax.reshape",
              "relax.flatten", "relax.mean", "relax.nn.adaptive_avg_pool2d", "relax.nn.avg_pool2d"):
        return None
    if isinstance(value, relax.Var):
        return None
    return op.removeprefix("relax.").removeprefix("nn.") or type(value).__name__


def _layer_before(var, producer: dict, params: dict) -> str:
    """The nearest conv or linear layer upstream of `var`, by its module path (its weight's
    name without `.weight`): the user's name for a place in the graph."""
    seen, todo = set(), [var]
    while todo:
        v = todo.pop(0)
        value = producer.get(v)
        if not isinstance(value, relax.Call) or v in seen:
            continue
        seen.add(v)
        name = getattr(value.op, "name", "")
        if name in ("relax.nn.conv2d", "relax.matmul"):
            w = value.args[1] if name == "relax.nn.conv2d" else producer.get(value.args[1], value).args[0]
            if w in params:
                return f"{w.name.removesuffix('.weight')} ({'conv' if name == 'relax.nn.conv2d' else 'linear'})"
        todo += [a for a in value.args if isinstance(a, relax.Var)]
    return "the input"


def _find_bias(start, end, producer, params, users):
    """The bias parameter added between a layer's output `start` and its chain end."""
    chain = _chain_list(start, end, users)
    for prev, var in zip(chain, chain[1:]):
        if getattr(producer[var].op, "name", "") == "relax.add":
            bias = bias_operand(producer[var], prev, producer, params)
            if bias is not None:
                return bias
    return None


def _chain_list(start, end, users) -> list:
    out = [start]
    while not out[-1].same_as(end):
        out.append(users[out[-1]][0])
    return out


def _activation_ranges(model: ImportedModel, calibration: np.ndarray) -> dict:
    """(min, max) of the input and of every intermediate tensor over the samples."""
    func = model.mod["main"]
    bindings = [b for block in func.body.blocks for b in block.bindings
                if isinstance(b.var.ty, relax.TensorType) and str(b.var.ty.dtype) == "float32"]
    tensors = [func.params[0]] + [b.var for b in bindings]
    bb = relax.BlockBuilder()
    with bb.function("main", list(func.params)):  # main, returning every tensor it computes
        with bb.dataflow():
            for block in func.body.blocks:
                for b in block.bindings:
                    bb.emit_normalized(b)
            out = bb.emit_output(relax.Tuple(tensors))
        bb.emit_func_output(out)
    probe = bb.get()
    vm = relax.VirtualMachine(tvm.compile(probe, target="llvm"), tvm.cpu())
    params = [tvm.runtime.tensor(v) for v in model.params.values()]
    lo = np.full(len(tensors), np.inf)
    hi = np.full(len(tensors), -np.inf)
    for x in calibration:
        outs = vm["main"](tvm.runtime.tensor(np.asarray(x, np.float32).reshape(model.input_shape)), *params)
        for i, t in enumerate(outs):
            v = t.numpy()
            lo[i], hi[i] = min(lo[i], v.min()), max(hi[i], v.max())
    return {t: (lo[i], hi[i]) for i, t in enumerate(tensors)}
