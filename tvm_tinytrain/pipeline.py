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
from tvm_tinytrain.passes.fuse_sgd_update import stored_params
from tvm_tinytrain.passes.sgd_kernels import MASTER_SCALE
from tvm_tinytrain.passes import (LOSSES, AppendCrossEntropyLoss, AppendReconstructionLoss, BuildGradient,
                                  FloatTrainableParams, FuseSGDUpdate, InsertQASRescale, NarrowWeightGradient,
                                  check_reconstruction)


# How an int8 graph's trainable integers take an update smaller than one integer step
# (README, "int8 updates", measured by bench/int8_update.py). The default, stochastic: at
# each task's best learning rate all four are equal within the seeds' spread; at a tenth
# of it nearest ends 14-19 points below the others, and stochastic rounding keeps what
# the masters keep with no extra RAM.
#   nearest     rounded to the nearest integer: lost when under half a step (no extra RAM)
#   stochastic  rounded down or up at random in proportion, unbiased (no extra RAM; a
#               counter-based hash per element, deterministic)
#   int16       int8 weights held as int16 masters in 1/256 steps (RAM x2 for those
#               weights); int32 biases rounded to nearest
#   float32     weights and biases held as float32 masters (RAM x4 for the weights), as
#               tiny-training trains
# The forward pass of a master reads its rounded value; gradients pass straight through.
INT8_UPDATES = ("nearest", "stochastic", "int16", "float32")


@dataclass(frozen=True)
class TrainOptions:
    lr: float = 0.05
    momentum: float = 0.0
    qas: bool | None = None  # Quantization-Aware Scaling: default on for int8 graphs only
    # int8 graphs: how a trainable int8 weight / int32 bias takes an SGD update (INT8_UPDATES).
    int8_update: str = "stochastic"
    # "cross-entropy" (a classifier and its label) or "mse" (an autoencoder: the mean squared
    # error between the output and the input; the label is ignored)
    loss: str = "cross-entropy"

    def __post_init__(self):
        if self.int8_update not in INT8_UPDATES:
            raise ConfigError(f"int8_update must be one of {', '.join(INT8_UPDATES)}, got {self.int8_update!r}")
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
    recompute_views: bool = True   # RecomputeParamViews: a master's rounded weight computed where read
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
    storage, masters = _storage(ints, options.int8_update)
    params = dict(model.params)
    params.update({n: as_master(model.params[n], dtype) for n, dtype in masters.items()})
    seq = tvm.transform.Sequential([
        AppendReconstructionLoss() if options.loss == "mse" else AppendCrossEntropyLoss(),
        FloatTrainableParams(train, masters=set(masters)),
        BuildGradient(train),
        NarrowWeightGradient(train, trainable.ratio, trainable.channel_axis),
        *([InsertQASRescale(train, model.quant_scales)] if qas else []),
        FuseSGDUpdate(train, options.lr, options.momentum, trainable.ratio, trainable.channel_axis, storage,
                      rounding="stochastic" if options.int8_update == "stochastic" else "nearest",
                      masters={n: ints[n] for n in masters}),
    ])
    mod = seq(model.mod)
    keep = {"main", "train_step"}
    mod = tvm.IRModule({gv: f for gv, f in mod.functions.items()
                        if gv.name_hint in keep or not isinstance(f, tvm.relax.Function)})
    if masters:  # main (predict) reads the master copies too
        mod = _predict_from_master(mod, masters)
    return TrainingProgram(mod, params, trainable, options, model.input_shape,
                           model.num_classes, model.source)


def _storage(ints: dict[str, str], update: str) -> tuple[dict[str, str], dict[str, str]]:
    """(how each trainable integer parameter is stored in RAM, the master copies among
    them: name -> dtype) for an `INT8_UPDATES` choice."""
    if update == "float32":
        return {}, dict.fromkeys(ints, "float32")
    if update == "int16":
        masters = {n: "int16" for n, dtype in ints.items() if dtype == "int8"}
        return {**ints, **masters}, masters
    return dict(ints), {}


def as_master(value: np.ndarray, dtype: str) -> np.ndarray:
    """An integer parameter's initial master copy of `dtype` (int16, float32): the same
    value, finer steps."""
    if dtype == "int16":
        return value.astype(np.int16) * np.int16(MASTER_SCALE["int16"])
    if dtype == "float32":
        return value.astype(np.float32)
    raise ValueError(f"no master copy of type {dtype}")


def _predict_from_master(mod: tvm.IRModule, masters: dict[str, str]) -> tvm.IRModule:
    """`main` reading the master copies `masters` (name -> dtype), rounded like the
    training forward."""
    mod = tvm.IRModule(dict(mod.functions))
    main = FloatTrainableParams(sorted(masters), masters=set(masters), func_name="main")(mod)["main"]
    ints = {n for n, dtype in masters.items() if dtype != "float32"}
    if ints:  # main takes them as stored and reads their float view
        main = stored_params(main, {n: masters[n] for n in ints})
    mod["main"] = main.with_attr("num_input", 1)
    return mod
