"""Relax passes that turn an inference graph into an on-device training step.

Each is an ordinary TVM pass, usable on its own in a `tvm.transform.Sequential`.
"""

from .append_loss import LOSSES, AppendCrossEntropyLoss, AppendReconstructionLoss, check_reconstruction
from .build_gradient import BuildGradient
from .float_trainable_params import FloatTrainableParams
from .forward_tuple_items import ForwardTupleItems
from .fuse_kernels import FuseKernels
from .fuse_sgd_update import FuseSGDUpdate
from .inplace_depthwise import InplaceDepthwise
from .insert_qas_rescale import InsertQASRescale
from .int8_activations import Int8Activations
from .narrow_weight_gradient import NarrowWeightGradient
from .normalize_onnx import NormalizeONNX
from .pack_backward_masks import PackBackwardMasks
from .recompute_param_views import RecomputeParamViews
from .patch_frozen_prefix import PatchFrozenPrefix
from .reorder_for_memory import ReorderForMemory
from .split_trained_channels import SplitTrainedChannels
from .tabulate_int8_functions import TabulateInt8Functions

__all__ = ["LOSSES", "AppendCrossEntropyLoss", "AppendReconstructionLoss", "check_reconstruction", "BuildGradient", "FloatTrainableParams", "ForwardTupleItems", "FuseKernels", "FuseSGDUpdate",
           "InplaceDepthwise", "InsertQASRescale", "Int8Activations", "NarrowWeightGradient", "NormalizeONNX",
           "PackBackwardMasks", "PatchFrozenPrefix", "RecomputeParamViews", "ReorderForMemory", "SplitTrainedChannels", "TabulateInt8Functions"]
