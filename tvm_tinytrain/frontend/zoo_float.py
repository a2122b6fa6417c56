"""tiny-training zoo model -> Relax, as the fp32 network its int8 model quantizes.

`import_zoo` (zoo_frontend.py) builds the int8 graph that tiny-training runs and trains.
This module builds its float counterpart, the "fp32" baseline of the paper's QAS
comparison: the same layers and the same weights, dequantized, with no rounding anywhere.

    input:     x_real = (x - x_zero) * x_scale        (x: the same float32 tensor of int8
                                                        values that feeds `import_zoo`)
    conv:      y = clip(conv2d(x, W) + b, lo, hi)      W[o] = weight[o] * w_scales[o]
                                                       b[o] = bias[o] * w_scales[o] * x_scale
               [lo, hi] = [(-128 - y_zero) * y_scale, (127 - y_zero) * y_scale], the real range
               of the conv's int8 output: the ReLU / ReLU6 the quantizer folded into it
    residual:  y = clip(x_in + x_conv, lo, hi)         (the add's own output range)
    pool:      y = mean(x, H, W)
    logits:    the classifier (a 1x1 conv with bias on the pooled features), reshaped to
               (1, num_classes), left as float: no clip, no quantization step

Parameters have the names `import_zoo` gives them (`first_conv.weight`,
`blocks.3.depthwise.bias`, ..., `classifier.weight`), in the same order, as float32; the
graph is in the normal form of `frontend/imported.py` (`add(conv2d(x, W), reshape(b))`,
`clip` for activations), so `find_layers` sees the same 43 convs and a sparse-update
scheme selects the same tensors in both graphs. A new head (`num_classes`) is
`zoo_frontend.new_classifier` dequantized: the int8 and the fp32 graph start from the same
head for the same seed.

The result is a float model (`quant_scales` empty): it trains without QAS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from .imported import ImportedModel
from .zoo_format import ZooConv, ZooModel, load_zoo_model
from .zoo_frontend import new_classifier


def dequantize_conv(conv: ZooConv) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of an int8 conv as float32: W = w_q * w_scales[o], b = b_q * w_scales[o] * x_scale
    (products in float64, rounded once to float32)."""
    s = conv.w_scales.astype(np.float64)
    w = conv.weight.astype(np.float64) * s.reshape(-1, 1, 1, 1)
    b = conv.bias.astype(np.float64) * s * np.float64(conv.x_scale)
    return w.astype(np.float32), b.astype(np.float32)


def real_range(zero: int, scale: float) -> tuple[float, float]:
    """The real values an int8 tensor with this zero point and scale can hold."""
    return (-128 - zero) * float(scale), (127 - zero) * float(scale)


def import_zoo_float(model: ZooModel | str | Path, num_classes: int | None = None,
                     seed: int = 0) -> ImportedModel:
    """The fp32 counterpart of `import_zoo(model, num_classes, seed)` as a Relax graph."""
    if not isinstance(model, ZooModel):
        model = load_zoo_model(model)
    classifier = model.classifier if num_classes is None else new_classifier(model.classifier, num_classes, seed)
    c, h, w = model.input_shape
    x = relax.Var("x", relax.TensorType((1, c, h, w), "float32"))
    builder = _FloatGraphBuilder()
    bb = relax.BlockBuilder()
    first = model.first_conv
    with bb.function("main", attrs={"num_input": 1}):
        with bb.dataflow():
            y = bb.emit(relax.op.multiply(relax.op.subtract(x, _f32(first.x_zero)), _f32(first.x_scale)))
            y = builder.conv(bb, y, first, "first_conv")
            for block in model.blocks:
                block_in = y
                for name, conv in (("pointwise1", block.pointwise1), ("depthwise", block.depthwise),
                                   ("pointwise2", block.pointwise2)):
                    if conv is not None:
                        y = builder.conv(bb, y, conv, f"blocks.{block.index}.{name}")
                if block.residual is not None:
                    r = block.residual
                    y = bb.emit(relax.op.add(block_in, y))
                    y = bb.emit(relax.op.clip(y, *real_range(r.y_zero, r.y_scale)))
            if model.feature_mix is not None:
                y = builder.conv(bb, y, model.feature_mix, "feature_mix")
            y = bb.emit(relax.op.mean(y, axis=[2, 3], keepdims=True))
            y = builder.conv(bb, y, classifier, "classifier", clip=False)
            logits = bb.emit_output(relax.op.reshape(y, (1, classifier.out_channel)))
        bb.emit_func_output(logits, params=[x, *builder.vars])
    mod = tvm.IRModule({"main": bb.get()["main"]})
    return ImportedModel(mod=mod, params=builder.params, input_shape=(1, c, h, w),
                         source=f"{model.source} (fp32)")


def _f32(value) -> relax.Expr:
    return relax.const(np.float32(value), "float32")


class _FloatGraphBuilder:
    """Emits the dequantized layers; collects the float32 parameters in graph order."""

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.vars: list[relax.Var] = []

    def param(self, name: str, value: np.ndarray) -> relax.Var:
        var = relax.Var(name, relax.TensorType(value.shape, "float32"))
        self.params[name] = value
        self.vars.append(var)
        return var

    def conv(self, bb, x, conv: ZooConv, name: str, clip: bool = True):
        w_value, b_value = dequantize_conv(conv)
        w = self.param(f"{name}.weight", w_value)
        b = self.param(f"{name}.bias", b_value)
        p = conv.padding
        acc = bb.emit(relax.op.nn.conv2d(x, w, strides=conv.stride, padding=(p, p, p, p),
                                         groups=conv.groups, out_dtype="float32"))
        y = bb.emit(relax.op.add(acc, relax.op.reshape(b, (1, conv.out_channel, 1, 1))))
        if clip:
            y = bb.emit(relax.op.clip(y, *real_range(conv.y_zero, conv.y_scale)))
        return y
