"""Relax passes that turn an inference graph into an on-device training step.

Each is an ordinary TVM pass, usable on its own in a `tvm.transform.Sequential`.
"""

from .append_loss import AppendCrossEntropyLoss
from .build_gradient import BuildGradient
from .fuse_sgd_update import FuseSGDUpdate
from .narrow_weight_gradient import NarrowWeightGradient
from .normalize_onnx import NormalizeONNX

__all__ = ["AppendCrossEntropyLoss", "BuildGradient", "FuseSGDUpdate", "NarrowWeightGradient", "NormalizeONNX"]
