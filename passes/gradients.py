"""Relax gradients that Apache TVM 0.27 lacks, for the ops our frontends emit.

Importing this module registers them (the ``FPrimalGradient`` op attribute that
``relax.transform.Gradient`` reads). Nothing else needs to be called.

What is registered, and why
---------------------------

``dy`` is the output gradient, ``x`` the op's input. TVM 0.27 has no gradient for any of
these except ``relu``, whose built-in we replace (see the boundary convention below).

- ``relax.clip(x, lo, hi)`` -> ``[where(lo < x < hi, dy, 0), no_grad(lo), no_grad(hi)]``.
  The torch frontend emits it for ``relu6``, ``hardtanh`` and ``clamp``.
- ``relax.nn.relu(x)`` -> ``where(x > 0, dy, 0)``. TVM's built-in is ``where(x < 0, 0, dy)``,
  which passes ``dy`` at ``x == 0`` where torch gives 0.
- ``relax.nn.pad(x, pad_width, "constant", value)`` -> ``strided_slice(dy, begin=before,
  end=before + x.shape)`` on every axis. Other modes and negative (cropping) widths raise
  ``UnsupportedOpError``. (The torch frontend imports reflect / replicate pads as ``take``
  ops, which TVM differentiates correctly; the ONNX frontend imports ``Pad`` as an opaque
  ``call_tir`` at opset 10 and fails on torch's dynamic pads at opset >= 11.)
- ``relax.flatten(x)`` and ``relax.squeeze(x, axis)`` -> ``reshape(dy, x.shape)``.
- ``relax.nn.adaptive_avg_pool2d(x, (oh, ow))``, NCHW only (else ``UnsupportedOpError``):

  * output equal to input: ``dy``;
  * output 1x1: ``broadcast_to(dy / (H * W), x.shape)`` (the gradient of a mean);
  * ``H % oh == 0 and W % ow == 0``: the op is ``avg_pool2d`` with kernel = stride =
    ``(H / oh, W / ow)``, so ``avg_pool2d_backward`` with those attributes;
  * otherwise, exactly as torch: adaptive average pooling is separable,
    ``y = Ah @ x @ Aw^T`` where ``Ah[i, r] = 1 / len_i`` for ``r`` in torch's window
    ``[floor(i * H / oh), ceil((i + 1) * H / oh))``; so ``dx = Ah^T @ dy @ Aw``, two
    matmuls with constant matrices.
- ``relax.round(x)`` -> ``dy``: the straight-through estimator. Only quantized graphs round
  (the int8 zoo frontend: requantization, pooling, saturation), and tiny-training passes
  the gradient through every rounding.

Errors raised inside a gradient function reach the caller of ``relax.transform.Gradient``
as a ``RuntimeError`` carrying our message (TVM's FFI does not keep the exception type).

Boundary convention (subgradients at the kinks)
-----------------------------------------------

``clip`` passes the gradient only *strictly inside* ``(lo, hi)``: at ``x == lo`` or
``x == hi`` it is 0. This is what torch does for ``relu6`` and ``hardtanh``
(``hardtanh_backward``). ``relu`` passes it only for ``x > 0`` (torch's
``threshold_backward``). torch's ``clamp`` is the odd one out: its backward is
*inclusive* (``lo <= x <= hi`` passes). The torch frontend turns ``hardtanh``, ``relu6``
and ``clamp`` all into the same ``relax.clip``, so one convention has to win; we pick
torch's ``relu6`` / ``hardtanh`` one (what CNNs use). A model written with
``torch.clamp`` therefore matches torch everywhere except at inputs *exactly* equal to
a bound, where we give 0 and torch gives ``dy``.

Registration
------------

All gradients are registered at level ``GRADIENT_LEVEL`` (20), above TVM's default 10,
so ours win over any built-in (on purpose for ``relu``; for the others TVM has none).
TVM refuses a second registration at the same level, so importing this module twice
(a reload, or the same file imported under two names) is a no-op the second time.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.op import (
    broadcast_to,
    greater,
    less,
    logical_and,
    matmul,
    reshape,
    strided_slice,
    where,
)
from tvm.relax.op.base import register_gradient
from tvm.relax.op.grad import avg_pool2d_backward, no_grad

from tvm_tinytrain.errors import UnsupportedOpError

GRADIENT_LEVEL = 20


##################### helpers #####################


def _static_shape(expr) -> list[int]:
    try:
        return [int(d) for d in expr.ty.shape]
    except Exception as error:  # symbolic or unknown shape
        raise UnsupportedOpError(
            f"gradient needs a static tensor shape, got {expr.ty} for {expr}"
        ) from error


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _scalar(expr, what: str) -> float:
    """The Python number of a constant scalar argument (FloatImm / IntImm / Constant)."""
    value = getattr(expr, "value", None)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(expr, relax.Constant) and expr.data.numpy().size == 1:
        return float(expr.data.numpy().reshape(()))
    raise UnsupportedOpError(f"{what} must be a constant scalar for training, got {expr}")


##################### gradients #####################


def clip_grad(orig_var, orig_call, output_grad, ctx):
    """``y = clip(x, lo, hi)``  ->  ``[where(lo < x < hi, dy, 0), no_grad, no_grad]``."""
    x, lo_arg, hi_arg = orig_call.args
    dtype = _dtype(x)
    lo = relax.const(_scalar(lo_arg, "clip min"), dtype)
    hi = relax.const(_scalar(hi_arg, "clip max"), dtype)
    inside = logical_and(greater(x, lo), less(x, hi))
    return [where(inside, output_grad, relax.const(0, dtype)), no_grad(lo_arg), no_grad(hi_arg)]


def relu_grad(orig_var, orig_call, output_grad, ctx):
    """``y = relu(x)``  ->  ``[where(x > 0, dy, 0)]`` (torch: 0 at x == 0)."""
    x = orig_call.args[0]
    zero = relax.const(0, _dtype(x))
    return [where(greater(x, zero), output_grad, zero)]


def pad_grad(orig_var, orig_call, output_grad, ctx):
    """``y = pad(x, pad_width, "constant")``  ->  ``[dy[before_i : before_i + x.shape[i]]]``."""
    attrs = orig_call.attrs
    x = orig_call.args[0]
    if str(attrs.pad_mode) != "constant":
        raise UnsupportedOpError(
            f"training through pad mode {attrs.pad_mode!r} is not supported (only 'constant')"
        )
    widths = [int(w) for w in attrs.pad_width]
    if any(w < 0 for w in widths):
        raise UnsupportedOpError(
            f"training through a negative (cropping) pad {widths} is not supported"
        )
    shape = _static_shape(x)
    before = widths[0::2]
    axes = list(range(len(shape)))
    grad = strided_slice(
        output_grad, axes=axes, begin=before, end=[b + n for b, n in zip(before, shape)]
    )
    return [grad] + [no_grad(arg) for arg in orig_call.args[1:]]


def reshape_back_grad(orig_var, orig_call, output_grad, ctx):
    """``flatten`` / ``squeeze``: ``[reshape(dy, x.shape)]``."""
    return [reshape(output_grad, orig_call.args[0].ty.shape)]


def _adaptive_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``A[i, r] = 1 / len_i`` for r in torch's window ``[floor(i*n_in/n_out), ceil(...))``."""
    mat = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)  # ceil
        mat[i, start:end] = 1.0 / (end - start)
    return mat


def adaptive_avg_pool2d_grad(orig_var, orig_call, output_grad, ctx):
    """``y = adaptive_avg_pool2d(x, (oh, ow))`` in NCHW; see the module docstring."""
    attrs = orig_call.attrs
    x = orig_call.args[0]
    if str(attrs.layout) != "NCHW" or str(attrs.out_layout) != "NCHW":
        raise UnsupportedOpError(
            "training through adaptive_avg_pool2d needs NCHW, "
            f"got {attrs.layout}/{attrs.out_layout}"
        )
    dtype = _dtype(x)
    in_h, in_w = _static_shape(x)[2:]
    out_h, out_w = _static_shape(orig_var)[2:]
    if (out_h, out_w) == (in_h, in_w):
        return [output_grad]
    if (out_h, out_w) == (1, 1):
        mean_grad = output_grad / relax.const(in_h * in_w, dtype)
        return [broadcast_to(mean_grad, x.ty.shape)]
    if in_h % out_h == 0 and in_w % out_w == 0:
        kernel = (in_h // out_h, in_w // out_w)
        return [
            avg_pool2d_backward(
                output_grad, x, pool_size=kernel, strides=kernel, padding=(0, 0, 0, 0),
                dilation=(1, 1), ceil_mode=False, count_include_pad=False,
                layout="NCHW", out_layout="NCHW",
            )
        ]
    ah_t = relax.const(_adaptive_matrix(in_h, out_h).T.astype(dtype), dtype)  # (in_h, out_h)
    aw = relax.const(_adaptive_matrix(in_w, out_w).astype(dtype), dtype)  # (out_w, in_w)
    return [matmul(matmul(ah_t, output_grad), aw)]


def round_grad(orig_var, orig_call, output_grad, ctx):
    """``y = round(x)``  ->  ``[dy]``: the straight-through estimator of quantized training
    (tiny-training's int8 ops pass the gradient through every rounding)."""
    return [output_grad]


##################### registration #####################

GRADIENTS = {
    "relax.clip": clip_grad,
    "relax.nn.relu": relu_grad,
    "relax.nn.pad": pad_grad,
    "relax.flatten": reshape_back_grad,
    "relax.squeeze": reshape_back_grad,
    "relax.nn.adaptive_avg_pool2d": adaptive_avg_pool2d_grad,
    "relax.round": round_grad,
}


def register_all() -> None:
    """Register every gradient in ``GRADIENTS``; a second call (or import) is a no-op."""
    for op_name, fgradient in GRADIENTS.items():
        try:
            register_gradient(op_name, fgradient, level=GRADIENT_LEVEL)
        except tvm.error.InternalError as error:
            if "already registered with same plevel" not in str(error):
                raise


register_all()
