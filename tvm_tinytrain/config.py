"""Which parameters train: a typed, validated sparse-update configuration.

Two ways to say it, combinable:

* explicit parameter names (`params: ["fc.weight", "features.6.bias"]`), and
* the tiny-training keys: `n_bias_update` (biases of the last N convs),
  `manual_weight_idx` (weights of these convs, counted from the input, 0-based) and
  `weight_update_ratio` (per listed conv, the fraction in (0, 1] of its input channels
  whose weights train: a sub-tensor update).

The classifier (the last conv or linear layer) always trains, weight and bias, unless
`train_classifier: false`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from .errors import ConfigError
from .layers import Layer


# The paper's sparse-update schemes for MCUNet-5FPS (DESIGN.md section 6) and
# MobileNetV2-w0.35 (the settings tiny-training's compilation/mcu_ir_gen.py uses), by memory
# budget: (biases of the last N convs, weight conv indices, ratios). A ratio of 0 in the paper's
# tables means the conv's weight does not train (tiny-training keeps int(C * 0) = 0
# channels), so those indices are left out here.
PAPER_SCHEMES = {
    "mcunet-49kb": (20, (23, 24, 27, 30, 33, 39), (0, 0.25, 0.5, 0.5, 0, 0)),
    "mcunet-74kb": (21, (21, 23, 24, 26, 27, 30), (1, 0, 1, 0, 0.5, 1)),
    "mcunet-99kb": (22, (21, 24, 27, 30, 36, 39), (1, 1, 1, 1, 0.125, 0.25)),
    "mcunet-124kb": (24, (21, 24, 27, 30, 33, 39), (0.25, 1, 1, 1, 0.5, 0.5)),
    "mcunet-148kb": (23, (21, 24, 27, 30, 36, 39), (1, 1, 1, 1, 1, 0.5)),
    "mbv2-49kb": (16, (36, 39, 40, 41, 42, 45, 48, 49), (1, 1, 0, 0.25, 0.125, 0.125, 0.125, 0.125)),
    "mbv2-73kb": (20, (32, 33, 36, 39, 41, 42, 45, 48), (0.125, 0.5, 0.5, 1, 0.25, 0.125, 0.125, 1)),
    "mbv2-99kb": (25, (27, 30, 33, 36, 39, 42, 45, 48), (1, 1, 1, 1, 1, 0.125, 0.5, 1)),
    "mbv2-123kb": (31, (27, 30, 33, 36, 39, 42, 45, 48), (1, 1, 1, 1, 1, 0.5, 1, 1)),
    "mbv2-138kb": (34, (27, 30, 33, 36, 39, 42, 45, 48), (1, 1, 1, 1, 1, 1, 1, 1)),
}


@dataclass(frozen=True)
class SparseUpdateConfig:
    params: tuple[str, ...] = ()
    n_bias_update: int = 0
    manual_weight_idx: tuple[int, ...] = ()
    weight_update_ratio: tuple[float, ...] = ()
    train_classifier: bool = True

    def __post_init__(self):
        object.__setattr__(self, "params", tuple(self.params))
        object.__setattr__(self, "manual_weight_idx", tuple(int(i) for i in self.manual_weight_idx))
        ratios = tuple(float(r) for r in self.weight_update_ratio) or (1.0,) * len(self.manual_weight_idx)
        object.__setattr__(self, "weight_update_ratio", ratios)
        if not isinstance(self.n_bias_update, int) or self.n_bias_update < 0:
            raise ConfigError(f"n_bias_update must be a non-negative integer, got {self.n_bias_update!r}")
        if len(ratios) != len(self.manual_weight_idx):
            raise ConfigError(
                f"weight_update_ratio has {len(ratios)} entries but manual_weight_idx has "
                f"{len(self.manual_weight_idx)}: give one ratio per conv index")
        for r in ratios:
            if not 0.0 < r <= 1.0:
                raise ConfigError(f"weight_update_ratio entries must lie in (0, 1], got {r}")
        if len(set(self.manual_weight_idx)) != len(self.manual_weight_idx):
            raise ConfigError(f"manual_weight_idx lists a conv twice: {list(self.manual_weight_idx)}")

    @classmethod
    def from_dict(cls, data: dict) -> "SparseUpdateConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown sparse-update key(s) {unknown}; known keys: {sorted(known)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"invalid sparse-update config: {err}") from None

    @classmethod
    def scheme(cls, name: str) -> "SparseUpdateConfig":
        """One of the paper's MCUNet-5FPS schemes, e.g. "mcunet-49kb"."""
        if name not in PAPER_SCHEMES:
            raise ConfigError(f"unknown scheme '{name}'; schemes: {', '.join(PAPER_SCHEMES)}")
        n_bias, idx, ratios = PAPER_SCHEMES[name]
        kept = [(i, r) for i, r in zip(idx, ratios) if r > 0]
        return cls(n_bias_update=n_bias, manual_weight_idx=tuple(i for i, _ in kept),
                   weight_update_ratio=tuple(r for _, r in kept))

    @classmethod
    def from_file(cls, path: str | Path) -> "SparseUpdateConfig":
        """Read YAML or JSON (JSON is YAML, so one parser reads both)."""
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read sparse-update config {path}: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sparse-update keys, got {type(data).__name__}")
        return cls.from_dict(data)

    def to_json(self) -> str:
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)})

    def resolve(self, layers: list[Layer], param_names: list[str]) -> "TrainableSet":
        """Map the config onto one model's parameters."""
        if not layers:
            raise ConfigError("the model has no conv or linear layer to train")
        classifier, convs = layers[-1], [l for l in layers[:-1] if l.kind == "conv2d"]
        ratios: dict[str, float] = {}
        for name in self.params:
            if name not in param_names:
                raise ConfigError(f"parameter '{name}' does not exist; the model's parameters are: "
                                  f"{', '.join(param_names)}")
            ratios[name] = 1.0
        if self.n_bias_update > len(convs):
            raise ConfigError(f"n_bias_update={self.n_bias_update} but the model has only {len(convs)} convs "
                              f"(besides the classifier)")
        for layer in convs[len(convs) - self.n_bias_update:]:
            if layer.bias is not None:
                ratios[layer.bias] = 1.0
        for idx, ratio in zip(self.manual_weight_idx, self.weight_update_ratio):
            if not 0 <= idx < len(convs):
                raise ConfigError(f"manual_weight_idx {idx} is out of range: the model has {len(convs)} convs "
                                  f"(indices 0..{len(convs) - 1}, counted from the input)")
            ratios[convs[idx].weight] = ratio
        if self.train_classifier:
            ratios[classifier.weight] = 1.0
            if classifier.bias is not None:
                ratios[classifier.bias] = 1.0
        if not ratios:
            raise ConfigError("the sparse-update config selects no parameter to train")
        axes = {l.weight: l.channel_axis for l in layers}
        order = [n for n in param_names if n in ratios]
        return TrainableSet(tuple(order), {n: ratios[n] for n in order},
                            {n: axes.get(n, 1) for n in order})


@dataclass(frozen=True)
class TrainableSet:
    """The resolved set: parameter names in graph order, with their channel ratio and axis."""

    names: tuple[str, ...]
    ratio: dict[str, float] = field(default_factory=dict)
    channel_axis: dict[str, int] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.ratio
