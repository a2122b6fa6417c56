"""The contract every frontend meets, so the passes see one kind of graph."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm


@dataclass
class ImportedModel:
    """A float model as a Relax module, its parameters kept apart.

    `mod["main"]` is `main(x, *params) -> logits`: one dataflow block, NCHW float32, batch 1,
    logits of shape (1, num_classes). Its parameters after `x` are Relax vars whose
    `name` is the user-facing parameter name (torch `state_dict` name such as
    `"features.0.weight"`, or the ONNX initializer name), in the same order as `params`.

    Normal form shared by all frontends (the passes rely on it):
      conv with bias: `add(conv2d(x, W), reshape(b, (1, C, 1, 1)))`
      linear:         `add(matmul(x, permute_dims(W, [1, 0])), b)` (add operands in either order)
      relu6 / clamp:  `clip(x, lo, hi)` (a differentiable Relax op, never an opaque call_tir)
      batch norm:     folded into the conv before it (no batch_norm op remains)
    """

    mod: tvm.IRModule
    params: dict[str, np.ndarray]
    input_shape: tuple[int, ...]
    source: str  # where it came from, for messages and generated-file headers
    # Quantized graphs only: parameter name -> real value of one integer unit, per output
    # channel (an int8 weight's s_W; an int32 bias's s_W * s_x). Empty for float graphs.
    quant_scales: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def is_quantized(self) -> bool:
        return bool(self.quant_scales)

    @property
    def num_classes(self) -> int:
        return int(self.mod["main"].ret_ty.shape[-1])
