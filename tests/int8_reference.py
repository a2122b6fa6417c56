"""Independent NumPy oracle: the int8 forward pass of a tiny-training zoo model.

It reproduces, bit for bit, what mit-han-lab/tiny-training computes when it trains these
models (`algorithm/quantize/custom_quantized_format.py: build_quantized_network_from_cfg`,
which builds the network from the `*Diff` modules of `algorithm/quantize/quantized_ops_diff.py`).
Checked against that code (run from a local copy) on both zoo files: 55 inputs (40 uniform
random, 15 smooth / synthetic / photographs), every conv, residual, pool and classifier
output compared, 0 differing elements. Tensors are NCHW; every activation is int8.

Rules (source = tiny-training @ 7bf8e05, `algorithm/quantize/`):

1. Conv accumulator (`quantized_ops_diff.py: _QuantizedConv2dFunc.forward`): subtract the
   input zero point *before* padding, `x - x_zero`, then convolve with the int8 weight, zero
   padding `(k - 1) // 2` (`custom_quantized_format.py: build_quantized_conv_from_cfg`),
   stride, groups. Weight zero point is 0 (symmetric per-channel, `quantize_helper.py:
   get_weight_scales`). Torch does this in float32, exact because every partial sum is an
   integer below 2**24 (asserted here); we do it in int64.
2. Requantize (`_QuantizedConv2dFunc.forward`, scale from `custom_quantized_format.py:
   get_effective_scale`): `s = float32(acc) + float32(bias)` (float32 add: the bias is a
   float32 tensor in torch, so an int32 bias >= 2**24 in magnitude is rounded, and so is the
   sum), `s = s * es` with `es = float32(float64(x_scale) * float64(w_scale) / float64(y_scale))`
   per output channel (float32 multiply), then round half to even (`torch.round`), then
   `+ y_zero`, then clamp to [-128, 127] (`_TruncateActivationRange`, `a_bit=8`).
   This is the only place where floating point touches a conv, and it is IEEE float32, so a
   C kernel reproduces it with `(float)acc + (float)bias`, `* es`, `rintf` (no FMA). Each
   detail matters: an exact int64 bias add with a float64 multiply changes 12-30 % of the
   int8 logits of the zoo models, rounding half away from zero about 20 %.
3. Activation: none. The `act` field is None in every zoo file and tiny-training never reads
   it; ReLU / ReLU6 are the int8 clamp of rule 2 (e.g. y_zero = -128, y_scale = 6/255).
4. Block (`quantized_ops_diff.py: QuantizedMbBlockDiff.forward`): pointwise1 -> depthwise ->
   pointwise2 (each may be absent), each a conv of rules 1-2.
5. Residual add (`quantized_ops_diff.py: _QuantizedElementwiseAddFunc.forward`, operands
   wired in `custom_quantized_format.py: build_quantized_block_from_cfg`), all float32:
   `f1 = (x_in - r.x_zero) * r.x_scale` (block input), `f2 = (x_conv - pw2.y_zero) *
   pw2.y_scale` (the block's last conv), `q = round_half_even((f1 + f2) / r.y_scale) +
   r.y_zero`, clamped to [-128, 127] (`QuantizedMbBlockDiff.forward`). Scales and zero points
   are float32 scalars (`quantized_ops.py: to_pt`).
6. feature_mix: a conv (rules 1-2) when present (None in the zoo files).
7. Global average pool (`quantized_ops_diff.py: _QuantizedAvgPoolFunc.forward`): the mean over
   H, W of the raw int8 values (zero point included; the scale and zero point pass through
   unchanged), rounded half to even. We compute the exact rational mean; torch's float32
   mean equals it whenever H*W is a power of two (4x4 = 16 for the 128x128 zoo models).
8. Classifier (`build_quantized_network_from_cfg`, `fc = build_quantized_conv_from_cfg(
   cfg['classifier'], a_bit=8)`): a 1x1 conv (rules 1-2) on the (N, C, 1, 1) pooled map.
   The output is **int8 logits** (N, num_classes); real logits are
   `(q - classifier.y_zero) * classifier.y_scale`.

9. Elementwise functions of int8 tensors (post-training quantized models, not the zoo's:
   MobileNetV3's hard-swish, the squeeze-excitation gate, sigmoid, SiLU, scalar arithmetic,
   channel concatenation), in rule 5's style: every int8 operand dequantized in float32,
   `(q - zero) * scale`, the function in float32 op by op as PyTorch defines it
   (`hardswish(x) = x * min(max(x + 3, 0), 6) / 6`, `hardsigmoid(x) = min(max(x + 3, 0), 6) / 6`,
   `sigmoid(x) = 1 / (1 + exp(-x))`, `silu(x) = x * sigmoid(x)`), then
   `clamp(round_half_even(y / y_scale) + y_zero, -128, 127)`. `exp` is rounded correctly
   here (float64, then float32); a C library's `expf` may be off by an ulp, which changes
   an int8 result only where `y / y_scale` is within an ulp of a half.

Not modelled: tiny-training feeds the first conv a float image `pixel - 127.5` and rounds it
(half to even); here the input is already int8. TinyEngine's C kernels differ from the torch
simulation: `*_fpreq` convs add the bias in int32 and truncate toward zero
(`(q31_t)((float)(acc + bias) * scale)`, `TinyEngine/src/kernels/fp_requantize_op/`) and
`add_fpreq` rounds half away from zero (C `round`), so they are not this oracle.
"""

from __future__ import annotations

import numpy as np

from tvm_tinytrain.frontend.zoo_format import ZooConv, ZooModel, ZooResidual

INT8_MIN, INT8_MAX = -128, 127
_F32_EXACT = 2 ** 24  # integers up to this magnitude are exact in float32


def conv_accumulate(x: np.ndarray, w: np.ndarray, x_zero: int, stride: int, groups: int
                    ) -> np.ndarray:
    """Rule 1: int64 accumulator of conv(x - x_zero, w), zero padding (k - 1) // 2."""
    n, cin, h, wd = x.shape
    cout, cin_g, k, _ = w.shape
    pad = (k - 1) // 2
    xs = np.pad(x.astype(np.int64) - x_zero, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    xg = xs.reshape(n, groups, cin_g, h + 2 * pad, wd + 2 * pad)
    wg = w.astype(np.int64).reshape(groups, cout // groups, cin_g, k, k)
    acc = np.zeros((n, groups, cout // groups, ho, wo), dtype=np.int64)
    for ky in range(k):
        for kx in range(k):
            window = xg[:, :, :, ky:ky + stride * (ho - 1) + 1:stride,
                        kx:kx + stride * (wo - 1) + 1:stride]
            acc += np.einsum("goi,ngiyx->ngoyx", wg[:, :, :, ky, kx], window)
    return acc.reshape(n, cout, ho, wo)


def requantize(acc: np.ndarray, bias: np.ndarray, eff_scale: np.ndarray, y_zero: int
               ) -> np.ndarray:
    """Rule 2: int64 accumulator (N, C, H, W) -> int8, per output channel C."""
    if np.abs(acc).max(initial=0) >= _F32_EXACT:
        raise OverflowError("conv accumulator reaches 2**24: tiny-training's float32 conv "
                            "is no longer exact, there is no bit-exact reference")
    col = (1, -1, 1, 1)
    s = acc.astype(np.float32) + bias.astype(np.float32).reshape(col)  # float32 add
    s = s * eff_scale.astype(np.float32).reshape(col)  # float32 multiply
    q = np.rint(s).astype(np.int64) + y_zero  # rint: round half to even
    return np.clip(q, INT8_MIN, INT8_MAX).astype(np.int8)


def conv_int8(x: np.ndarray, conv: ZooConv) -> np.ndarray:
    """Rules 1-2: one int8 conv layer."""
    acc = conv_accumulate(x, conv.weight, conv.x_zero, conv.stride, conv.groups)
    return requantize(acc, conv.bias, conv.effective_scale(), conv.y_zero)


def add_int8(x1: np.ndarray, zero1: int, scale1: float, x2: np.ndarray, zero2: int,
             scale2: float, zero_y: int, scale_y: float) -> np.ndarray:
    """Rule 5: int8 + int8 -> int8, each operand dequantized in float32."""
    f32 = np.float32
    f1 = (x1.astype(f32) - f32(zero1)) * f32(scale1)
    f2 = (x2.astype(f32) - f32(zero2)) * f32(scale2)
    q = np.rint((f1 + f2) / f32(scale_y)).astype(np.int64) + zero_y
    return np.clip(q, INT8_MIN, INT8_MAX).astype(np.int8)


def residual_int8(x_in: np.ndarray, x_conv: np.ndarray, res: ZooResidual, last_conv: ZooConv
                  ) -> np.ndarray:
    return add_int8(x_in, res.x_zero, res.x_scale, x_conv, last_conv.y_zero,
                    last_conv.y_scale, res.y_zero, res.y_scale)


def avg_pool_int8(x: np.ndarray) -> np.ndarray:
    """Rule 7: (N, C, H, W) int8 -> (N, C, 1, 1) int8, mean rounded half to even."""
    total = x.astype(np.int64).sum(axis=(2, 3), keepdims=True)
    # total / count is correctly rounded in float64 and can never land on the wrong side
    # of a .5 (they are 1 / (2 * count) apart), so rint gives the exact half-to-even mean.
    return np.rint(total / (x.shape[2] * x.shape[3])).astype(np.int8)


def layer_names(model: ZooModel) -> list[str]:
    """Names of every layer output `forward_int8` can stop at, in execution order."""
    names = ["first_conv"]
    for block in model.blocks:
        names += [c.name for c in block.convs]
        if block.residual is not None:
            names.append(block.residual.name)
    if model.feature_mix is not None:
        names.append("feature_mix")
    return names + ["pool", "classifier"]


def forward_int8(model: ZooModel, x_int8: np.ndarray, upto: str | None = None,
                 return_all: bool = False):
    """Run the int8 forward pass on a batch `x_int8` (N, C, H, W) int8.

    Returns the int8 output of layer `upto` (one of `layer_names(model)`; default the
    classifier, whose output is int8 logits of shape (N, num_classes); every other layer
    returns NCHW). With `return_all=True`, returns a dict name -> int8 output of every
    layer up to `upto`, in execution order.
    """
    names = layer_names(model)
    upto = upto or "classifier"
    if upto not in names:
        raise ValueError(f"unknown layer {upto!r}; layers: {names}")
    x = np.asarray(x_int8)
    if x.dtype != np.int8 or x.ndim != 4 or x.shape[1:] != model.input_shape:
        raise ValueError(f"expected int8 (N, {', '.join(map(str, model.input_shape))}), "
                         f"got {x.dtype} {x.shape}")
    outputs: dict[str, np.ndarray] = {}

    def emit(name, value):
        outputs[name] = value
        return name == upto

    x = conv_int8(x, model.first_conv)
    if emit("first_conv", x):
        return outputs if return_all else x
    for block in model.blocks:
        block_in = x
        for conv in block.convs:
            x = conv_int8(x, conv)
            if emit(conv.name, x):
                return outputs if return_all else x
        if block.residual is not None:
            x = residual_int8(block_in, x, block.residual, block.pointwise2)
            if emit(block.residual.name, x):
                return outputs if return_all else x
    if model.feature_mix is not None:
        x = conv_int8(x, model.feature_mix)
        if emit("feature_mix", x):
            return outputs if return_all else x
    x = avg_pool_int8(x)
    if emit("pool", x):
        return outputs if return_all else x
    x = conv_int8(x, model.classifier).reshape(x.shape[0], -1)
    emit("classifier", x)
    return outputs if return_all else x


# Rule 9: elementwise functions of int8 tensors, in float32

def dequantize_int8(q: np.ndarray, zero: int, scale: float) -> np.ndarray:
    return (q.astype(np.float32) - np.float32(zero)) * np.float32(scale)


def quantize_int8(y: np.ndarray, zero: int, scale: float) -> np.ndarray:
    q = np.rint(y.astype(np.float32) / np.float32(scale)).astype(np.int64) + zero
    return np.clip(q, INT8_MIN, INT8_MAX).astype(np.int8)


def _relu6_shifted(x: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(x + np.float32(3), np.float32(0)), np.float32(6))


def hardswish_f32(x: np.ndarray) -> np.ndarray:
    return x * _relu6_shifted(x) / np.float32(6)


def hardsigmoid_f32(x: np.ndarray) -> np.ndarray:
    return _relu6_shifted(x) / np.float32(6)


def sigmoid_f32(x: np.ndarray) -> np.ndarray:
    e = np.exp(-x.astype(np.float64)).astype(np.float32)  # a correctly rounded expf
    return np.float32(1) / (np.float32(1) + e)


def silu_f32(x: np.ndarray) -> np.ndarray:
    return x * sigmoid_f32(x)


def elementwise_int8(fn, operands, zero_y: int, scale_y: float) -> np.ndarray:
    """Rule 9: `fn` of int8 operands [(q, zero, scale), ...] -> int8."""
    return quantize_int8(fn(*[dequantize_int8(q, z, s) for q, z, s in operands]), zero_y, scale_y)
