"""Relax passes that turn an inference graph into an on-device training step.

Each is an ordinary TVM pass, usable on its own in a `tvm.transform.Sequential`.
"""

from .append_loss import AppendCrossEntropyLoss
from .build_gradient import BuildGradient
from .float_trainable_params import FloatTrainableParams
from .fuse_sgd_update import FuseSGDUpdate
from .insert_qas_rescale import InsertQASRescale
from .narrow_weight_gradient import NarrowWeightGradient
from .normalize_onnx import NormalizeONNX

__all__ = ["AppendCrossEntropyLoss", "BuildGradient", "FloatTrainableParams", "FuseSGDUpdate",
           "InsertQASRescale", "NarrowWeightGradient", "NormalizeONNX"]
