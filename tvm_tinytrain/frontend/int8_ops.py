"""The int8 operations of a quantized graph, as Relax: shared by the zoo importer and PTQ.

Activations are int8 values carried in float32 tensors (see `zoo_frontend.py` for why),
weights int8 and biases int32 parameters cast to float32 where used. The arithmetic is
tiny-training's (rules in `tests/int8_reference.py`).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

# Saturation bounds: half an integer step inside the next value. For integer q,
# round(clip(q, -128.49, 127.49)) == clip(q, -128, 127), and clip's gradient mask
# (strict inequalities) then passes the integer bounds, as tiny-training's does.
SAT_MIN, SAT_MAX = -128.49, 127.49


def f32(value) -> relax.Expr:
    return relax.const(np.float32(value), "float32")


def saturate(bb, q):
    """int8 saturation of integer-valued q, gradient passing for -128 <= q <= 127."""
    return bb.emit(relax.op.round(relax.op.clip(q, SAT_MIN, SAT_MAX)))


def requantize(bb, acc, bias, channels: int, effective_scale: np.ndarray, y_zero: int, channel_shape):
    """`sat(rint((acc + f32(bias)) * es) + y_zero)`, per output channel."""
    b = relax.op.reshape(relax.op.astype(bias, "float32"), channel_shape)
    s = bb.emit(relax.op.add(acc, b))
    es = relax.const(effective_scale.astype(np.float32).reshape(channel_shape), "float32")
    s = bb.emit(relax.op.multiply(s, es))
    return saturate(bb, bb.emit(relax.op.add(relax.op.round(s), f32(y_zero))))


def quantized_conv(bb, x, weight, bias, x_zero: int, effective_scale, y_zero: int, *, strides, padding, groups):
    """An int8 conv: `conv2d(x - x_zero, f32(W))`, requantized."""
    xc = bb.emit(relax.op.subtract(x, f32(x_zero)))
    acc = bb.emit(relax.op.nn.conv2d(xc, relax.op.astype(weight, "float32"), strides=strides, padding=padding,
                                     groups=groups, out_dtype="float32"))
    channels = int(weight.ty.shape[0])
    return requantize(bb, acc, bias, channels, effective_scale, y_zero, (1, channels, 1, 1))


def quantized_linear(bb, x, weight, bias, x_zero: int, effective_scale, y_zero: int):
    """An int8 linear layer, (1, I) x (O, I) -> (1, O), requantized."""
    xc = bb.emit(relax.op.subtract(x, f32(x_zero)))
    wt = bb.emit(relax.op.permute_dims(relax.op.astype(weight, "float32"), [1, 0]))
    acc = bb.emit(relax.op.matmul(xc, wt, out_dtype="float32"))
    channels = int(weight.ty.shape[0])
    return requantize(bb, acc, bias, channels, effective_scale, y_zero, (1, channels))


def quantized_add(bb, x1, z1, s1, x2, z2, s2, zy, sy):
    """int8 + int8 -> int8, each operand dequantized in float32 (tiny-training's add)."""
    a = relax.op.multiply(relax.op.subtract(x1, f32(z1)), f32(s1))
    b = relax.op.multiply(relax.op.subtract(x2, f32(z2)), f32(s2))
    s = bb.emit(relax.op.divide(relax.op.add(a, b), f32(sy)))
    return saturate(bb, bb.emit(relax.op.add(relax.op.round(s), f32(zy))))


def quantize(bb, x, scale: float, zero: int):
    """A real-valued tensor (the input, an elementwise region's result) to int8 values:
    `sat(rint(x / scale) + zero)`."""
    q = bb.emit(relax.op.add(relax.op.round(relax.op.divide(x, f32(scale))), f32(zero)))
    return saturate(bb, q)


def dequantize(bb, q, scale: float, zero: int):
    return bb.emit(relax.op.multiply(relax.op.subtract(q, f32(zero)), f32(scale)))
