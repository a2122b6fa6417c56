"""The compiler pipeline, top to bottom: imported float model -> training-step IRModule.

    ImportedModel (main(x, *params) -> logits)
      -> AppendCrossEntropyLoss   main_loss(x, label, *params) -> loss
         (or AppendReconstructionLoss, --loss mse: an autoencoder's mean squared error)
      -> FloatTrainableParams     int8 graphs: trainable integer params become float for Gradient
      -> BuildGradient            main_loss_adjoint(...) -> (loss, grads of the trainable set)
      -> NarrowWeightGradient     sub-tensor updates: weight gradients of the trained channels only
      -> InsertQASRescale         int8 graphs: gradients times scale^-2 (QAS)
      -> FuseSGDUpdate            train_step(x, label, *params[, *momenta]) -> (loss, updated...)
      -> keep main (predict) and train_step

The result runs on the Relax VM as it is (`reference.py`) and is lowered to C by
`targets/` (`codegen.py`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import tvm

from .config import SparseUpdateConfig, TrainableSet
from .errors import ConfigError
from .frontend.imported import ImportedModel
from .layers import find_layers
from tvm_tinytrain.passes import (LOSSES, AppendCrossEntropyLoss, AppendReconstructionLoss, BuildGradient,
                                  FloatTrainableParams, FuseSGDUpdate, InsertQASRescale, NarrowWeightGradient,
                                  check_reconstruction)


@dataclass(frozen=True)
class TrainOptions:
    lr: float = 0.05
    momentum: float = 0.0
    qas: bool | None = None  # Quantization-Aware Scaling: default on for int8 graphs only
    # int8 graphs: keep trainable weights and biases as float32 master copies (RAM x4 for
    # those tensors) that accumulate sub-step updates, the forward using their rounded
    # values, as tiny-training trains; False rounds every update into the integers.
    float_master: bool = False
    # "cross-entropy" (a classifier and its label) or "mse" (an autoencoder: the mean squared
    # error between the output and the input; the label is ignored)
    loss: str = "cross-entropy"

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must lie in [0, 1), got {self.momentum}")


@dataclass(frozen=True)
class MemoryOptions:
    """The memory passes of lowering (`targets/lower.py`), all but `patch_prefix` on by
    default. Each changes where and when tensors live (`tabulate`: how a function is
    computed), never a computed number; turn one off to measure it. `patch_prefix` is opt-in
    (`tinytrain compile --patch-prefix`): it trades instructions (each tile's halo is
    computed again) for RAM (README, memory section)."""

    tabulate: bool = True          # TabulateInt8Functions: a float function of one int8 tensor, a table (speed)
    int8_activations: bool = True  # Int8Activations: quantized activations stored as int8
    fuse_kernels: bool = True      # FuseKernels: casts, padding, requantization inside each kernel
    fuse_updates: bool = True      # FuseKernels: each SGD update inside the kernel computing its gradient
    fuse_depthwise: bool = True    # FuseKernels: a depthwise conv computes its input a channel at a time
    bit_masks: bool = True         # PackBackwardMasks: 1-bit masks kept for backward, not activations
    split_channels: bool = True    # SplitTrainedChannels: only the trained channels of a weight in RAM
    patch_prefix: bool = False     # PatchFrozenPrefix: the frozen early stage computed tile by tile
    reorder: bool = True           # ReorderForMemory: the paper's operator reordering
    inplace_depthwise: bool = True  # InplaceDepthwise: a depthwise kernel writes its result over its input

    @classmethod
    def none(cls) -> "MemoryOptions":
        return cls(**{f.name: False for f in dataclasses.fields(cls)})


@dataclass
class TrainingProgram:
    """A training step and a predict function over one set of parameters."""

    mod: tvm.IRModule                 # "main" (predict) and "train_step"
    params: dict[str, np.ndarray]     # initial values, in main's parameter order
    trainable: TrainableSet
    options: TrainOptions
    input_shape: tuple[int, ...]
    num_classes: int
    source: str
    memory: MemoryOptions = MemoryOptions()

    @property
    def momentum_shapes(self) -> dict[str, tuple[int, ...]]:
        """Momentum buffer name -> shape (only the channels that train, for a sub-tensor update)."""
        params = self.mod["train_step"].params
        return {p.name: tuple(int(d) for d in p.ty.shape) for p in params if p.name.startswith("momentum.")}


def build_training_program(model: ImportedModel, config: SparseUpdateConfig,
                           options: TrainOptions = TrainOptions()) -> TrainingProgram:
    main = model.mod["main"]
    names = [p.name for p in main.params[1:]]
    trainable = config.resolve(find_layers(main), names)
    qas = model.is_quantized if options.qas is None else options.qas
    if qas and not model.is_quantized:
        raise ConfigError("QAS rescales the gradients of int8 weights by their quantization scales; "
                          f"{model.source} is a float model, which has none: train it without QAS")
    if options.loss == "mse":
        check_reconstruction(main)
    train = list(trainable.names)
    ints = {n: str(model.params[n].dtype) for n in train if model.params[n].dtype != np.float32}
    storage = {} if options.float_master else ints
    params = dict(model.params)
    if options.float_master:
        params.update({n: model.params[n].astype(np.float32) for n in ints})
    seq = tvm.transform.Sequential([
        AppendReconstructionLoss() if options.loss == "mse" else AppendCrossEntropyLoss(),
        FloatTrainableParams(train, master=options.float_master),
        BuildGradient(train),
        NarrowWeightGradient(train, trainable.ratio, trainable.channel_axis),
        *([InsertQASRescale(train, model.quant_scales)] if qas else []),
        FuseSGDUpdate(train, options.lr, options.momentum, trainable.ratio, trainable.channel_axis, storage),
    ])
    mod = seq(model.mod)
    keep = {"main", "train_step"}
    mod = tvm.IRModule({gv: f for gv, f in mod.functions.items()
                        if gv.name_hint in keep or not isinstance(f, tvm.relax.Function)})
    if options.float_master:  # main (predict) reads the master copies too
        mod = _predict_from_master(mod, set(ints))
    return TrainingProgram(mod, params, trainable, options, model.input_shape,
                           model.num_classes, model.source)


def _predict_from_master(mod: tvm.IRModule, names: set[str]) -> tvm.IRModule:
    """`main` with float32 master copies for `names`, rounded like the training forward."""
    mod = tvm.IRModule(dict(mod.functions))
    tmp = FloatTrainableParams(sorted(names), master=True, func_name="main")(mod)
    mod["main"] = tmp["main"].with_attr("num_input", 1)
    return mod
