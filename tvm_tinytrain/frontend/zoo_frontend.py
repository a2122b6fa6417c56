"""tiny-training zoo model -> Relax: the int8 forward pass, bit-exact, as a float graph.

The graph computes exactly what tiny-training computes (the rules are in
`tests/int8_reference.py`, the independent oracle): every activation holds an int8 value,
carried in a float32 tensor, and every conv is `conv(x - x_zero, W)` on integers, exact in
float32 because each partial sum is an integer below 2**24 (as in tiny-training itself),
followed by the float32 requantization `rint((acc + bias) * es) + y_zero`, clamped to int8.

Keeping the values in float32 is what makes the graph trainable with Relax `Gradient`
(which refuses integer tensors): `round` passes gradients straight through and the
saturation masks them where a value leaves the int8 range, as tiny-training does
(`_TruncateActivationRange`: the gradient passes for -128 <= q <= 127, bounds included).
The saturation is written `round(clip(q, -128.49, 127.49))`: for integer q it equals
`clip(q, -128, 127)`, and clip's gradient mask (strict inequalities) then includes the
integer bounds. Weights stay int8 and biases int32
(the graph parameters), cast to float32 where they are used.

    conv:      y = sat(round((conv2d(x - zx, f32(W)) + f32(b)) * es) + zy)
    residual:  y = sat(round(((x_in - zi) * si + (x_conv - zc) * sc) / sy) + zy)
    pool:      y = round(mean(x, H, W))
    logits:    (q - zy) * sy of the classifier (a 1x1 conv), shape (1, num_classes)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from .imported import ImportedModel
from .int8_ops import f32, quantized_add, quantized_conv, saturate
from .zoo_format import ZooConv, ZooModel, load_zoo_model



def import_zoo(model: ZooModel | str | Path, num_classes: int | None = None, seed: int = 0) -> ImportedModel:
    """The int8 model as a Relax graph; `num_classes` replaces the classifier by a new one."""
    if not isinstance(model, ZooModel):
        model = load_zoo_model(model)
    classifier = model.classifier if num_classes is None else new_classifier(model.classifier, num_classes, seed)
    c, h, w = model.input_shape
    x = relax.Var("x", relax.TensorType((1, c, h, w), "float32"))
    builder = _GraphBuilder()
    bb = relax.BlockBuilder()
    with bb.function("main", attrs={"num_input": 1}):
        with bb.dataflow():
            # the sample holds int8 values (tiny-training's input); saturating it is the
            # identity on them, and tells the memory passes the input can be stored as int8
            y = builder.conv(bb, saturate(bb, x), model.first_conv, "first_conv")
            for block in model.blocks:
                block_in = y
                for name, conv in (("pointwise1", block.pointwise1), ("depthwise", block.depthwise),
                                   ("pointwise2", block.pointwise2)):
                    if conv is not None:
                        y = builder.conv(bb, y, conv, f"blocks.{block.index}.{name}")
                if block.residual is not None:
                    r, last = block.residual, block.pointwise2
                    y = builder.add(bb, block_in, r.x_zero, r.x_scale, y, last.y_zero, last.y_scale,
                                    r.y_zero, r.y_scale)
            if model.feature_mix is not None:
                y = builder.conv(bb, y, model.feature_mix, "feature_mix")
            y = bb.emit(relax.op.round(relax.op.mean(y, axis=[2, 3], keepdims=True)))
            q = builder.conv(bb, y, classifier, "classifier")
            q = bb.emit(relax.op.reshape(q, (1, classifier.out_channel)))
            logits = bb.emit_output(relax.op.multiply(
                relax.op.subtract(q, f32(classifier.y_zero)), f32(classifier.y_scale)))
        bb.emit_func_output(logits, params=[x, *builder.vars])
    mod = tvm.IRModule({"main": bb.get()["main"]})
    return ImportedModel(mod=mod, params=builder.params, input_shape=(1, c, h, w), source=str(model.source),
                         quant_scales=builder.scales)


class _GraphBuilder:
    """Emits the int8 layers; collects the parameters (int8 weights, int32 biases) in order."""

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.scales: dict[str, np.ndarray] = {}
        self.vars: list[relax.Var] = []

    def param(self, name: str, value: np.ndarray) -> relax.Var:
        var = relax.Var(name, relax.TensorType(value.shape, str(value.dtype)))
        self.params[name] = value
        self.vars.append(var)
        return var

    def conv(self, bb, x, conv: ZooConv, name: str):
        w = self.param(f"{name}.weight", conv.weight)
        b = self.param(f"{name}.bias", conv.bias)
        self.scales[f"{name}.weight"] = conv.w_scales.astype(np.float32)
        self.scales[f"{name}.bias"] = (conv.w_scales.astype(np.float64) * conv.x_scale).astype(np.float32)
        p = conv.padding
        return quantized_conv(bb, x, w, b, conv.x_zero, conv.effective_scale(), conv.y_zero,
                              strides=conv.stride, padding=(p, p, p, p), groups=conv.groups)

    @staticmethod
    def add(bb, x1, z1, s1, x2, z2, s2, zy, sy):
        return quantized_add(bb, x1, z1, s1, x2, z2, s2, zy, sy)


def new_classifier(old: ZooConv, num_classes: int, seed: int = 0) -> ZooConv:
    """A fresh int8 head for a new task: Kaiming-uniform float weights quantized per output
    channel (symmetric), zero bias, the old head's input and output quantization."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(old.in_channel)
    w = rng.uniform(-bound, bound, (num_classes, old.in_channel, 1, 1)).astype(np.float32)
    w_scales = (np.abs(w).reshape(num_classes, -1).max(axis=1) / 127.0).astype(np.float32)
    weight = np.clip(np.rint(w / w_scales.reshape(-1, 1, 1, 1)), -127, 127).astype(np.int8)
    return ZooConv(name="classifier", in_channel=old.in_channel, out_channel=num_classes, in_shape=None,
                   out_shape=None, kernel_size=1, stride=1, groups=1, depthwise=False, weight=weight,
                   bias=np.zeros(num_classes, np.int32), w_scales=w_scales, x_scale=old.x_scale,
                   x_zero=old.x_zero, y_scale=old.y_scale, y_zero=old.y_zero)
