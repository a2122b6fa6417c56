"""Which parameters train: a typed, validated sparse-update configuration.

Two ways to say it, combinable:

* explicit parameter names (`params: ["fc.weight", "features.6.bias"]`), and
* the tiny-training keys: `n_bias_update` (biases of the last N layers),
  `manual_weight_idx` (weights of these layers, counted from the input, 0-based) and
  `weight_update_ratio` (per listed layer, the fraction in (0, 1] of its input channels
  whose weights train: a sub-tensor update). Layers are the convs and linear layers
  before the classifier, in graph order (the paper's conv indices for CNNs, whose only
  linear layer is the classifier; an MLP's hidden layers).

The classifier (the last conv or linear layer) always trains, weight and bias, unless
`train_classifier: false`.

Config files are untrusted input, read by `from_file` against a strict schema: exact types
(a bool is a bool, an int is an int and not a bool, lists hold the right element type,
ratios are int or float numbers), no duplicate keys, no YAML anchors or aliases (a config
never needs them; they make alias bombs), UTF-8 text of at most 64 KiB, nesting depth at
most 8, at most 10,000 list entries and integers at most 1,000,000 (a model has far fewer
convs).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import yaml

from .errors import ConfigError, brief
from .layers import Layer

MAX_CONFIG_BYTES = 64 << 10
MAX_CONFIG_DEPTH = 8      # a config is a mapping of scalars and lists of scalars: depth 3
MAX_LIST = 10_000
MAX_INDEX = 1_000_000     # bound for n_bias_update and conv indices


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    return _is_int(value) or isinstance(value, (float, np.floating))


def _entries(value, key: str, kind: str, ok) -> tuple:
    """`value` as a tuple, if it is a list or tuple of at most MAX_LIST entries passing `ok`."""
    if type(value) not in (list, tuple):
        raise ConfigError(f"{key} must be a list of {kind}, got {type(value).__name__} {brief(value)}")
    if len(value) > MAX_LIST:
        raise ConfigError(f"{key} has {len(value)} entries, more than {MAX_LIST}")
    for v in value:
        if not ok(v):
            raise ConfigError(f"{key} must be a list of {kind}, got an entry {type(v).__name__} {brief(v)}")
    return tuple(value)


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


class _StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses anchors, aliases, merge keys, duplicate keys and
    nesting deeper than MAX_CONFIG_DEPTH (checked while composing, before any recursion
    gets deep)."""

    _depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        where = f"line {event.start_mark.line + 1}"
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise ConfigError(f"{where}: YAML anchors and aliases (&name, *name) are not allowed")
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                raise ConfigError(f"{where}: nested deeper than {MAX_CONFIG_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            where = f"line {key_node.start_mark.line + 1}"
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ConfigError(f"{where}: YAML merge keys (<<) are not allowed")
            key = self.construct_object(key_node, deep=True)
            if type(key) is not str:
                raise ConfigError(f"{where}: keys must be strings, got {type(key).__name__} {brief(key)}")
            if key in seen:
                raise ConfigError(f"{where}: duplicate key {brief(key)}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        """Refuse a 5,000-digit integer before Python's int() chokes on it."""
        if len(str(node.value)) > 40:
            raise ConfigError(f"line {node.start_mark.line + 1}: integer {brief(node.value, 30)} "
                              f"is too large")
        return super().construct_yaml_int(node)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


@dataclass(frozen=True)
class SparseUpdateConfig:
    params: tuple[str, ...] = ()
    n_bias_update: int = 0
    manual_weight_idx: tuple[int, ...] = ()
    weight_update_ratio: tuple[float, ...] = ()
    train_classifier: bool = True

    def __post_init__(self):
        """Type-strict: `manual_weight_idx: "23"` or `train_classifier: "no"` is an error,
        never a conversion (lists or tuples are both fine)."""
        params = tuple(str(v) for v in _entries(self.params, "params", "parameter names",
                                                 lambda v: isinstance(v, str)))  # TVM's names too
        idx = _entries(self.manual_weight_idx, "manual_weight_idx", "conv indices (ints)", _is_int)
        ratios = _entries(self.weight_update_ratio, "weight_update_ratio", "numbers", _is_number)
        if not _is_int(self.n_bias_update) or not 0 <= self.n_bias_update <= MAX_INDEX:
            raise ConfigError(f"n_bias_update must be a non-negative integer (at most {MAX_INDEX}), "
                              f"got {type(self.n_bias_update).__name__} {brief(self.n_bias_update)}")
        if not isinstance(self.train_classifier, (bool, np.bool_)):
            raise ConfigError(f"train_classifier must be true or false, got "
                              f"{type(self.train_classifier).__name__} {brief(self.train_classifier)}")
        for i in idx:
            if not 0 <= i <= MAX_INDEX:
                raise ConfigError(f"manual_weight_idx entry {brief(i)} is out of range (conv indices "
                                  f"count from 0, at most {MAX_INDEX})")
        for r in ratios:
            if not 0 < r <= 1 or not math.isfinite(r):  # compared before float(): 10**5000 is no float
                raise ConfigError(f"weight_update_ratio entries must lie in (0, 1], got {brief(r)}")
        idx = tuple(int(i) for i in idx)
        ratios = tuple(float(r) for r in ratios) or (1.0,) * len(idx)
        if len(ratios) != len(idx):
            raise ConfigError(
                f"weight_update_ratio has {len(ratios)} entries but manual_weight_idx has "
                f"{len(idx)}: give one ratio per conv index")
        if len(set(idx)) != len(idx):
            raise ConfigError(f"manual_weight_idx lists a conv twice: {brief(list(idx))}")
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "manual_weight_idx", idx)
        object.__setattr__(self, "weight_update_ratio", ratios)
        object.__setattr__(self, "n_bias_update", int(self.n_bias_update))
        object.__setattr__(self, "train_classifier", bool(self.train_classifier))

    @classmethod
    def from_dict(cls, data: dict) -> "SparseUpdateConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"expected a mapping of sparse-update keys, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = [k for k in data if k not in known]
        if unknown:
            raise ConfigError(f"unknown sparse-update key(s) {brief(unknown, 200)}; known keys: "
                              f"{sorted(known)}")
        return cls(**data)

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
        """Read YAML or JSON (JSON is YAML, so one parser reads both) with `_StrictLoader`."""
        return cls.from_dict(cls.read_file(path))

    @classmethod
    def read_file(cls, path: str | Path) -> dict:
        """The keys a config file sets, checked: what to lay over a `--scheme`."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_CONFIG_BYTES + 1)
        except OSError as err:
            raise ConfigError(f"cannot read sparse-update config {path}: {err.strerror or err}") from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: more than {MAX_CONFIG_BYTES} bytes; a sparse-update config "
                              "is a few lines")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                              f"{err.start})") from None
        try:
            data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        except (yaml.YAMLError, ValueError, RecursionError) as err:
            msg = " ".join(str(err).split())
            raise ConfigError(f"cannot read sparse-update config {path}: "
                              f"{msg if len(msg) <= 300 else msg[:297] + '...'}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sparse-update keys, got {type(data).__name__}")
        try:
            cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        return data

    def to_json(self) -> str:
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)})

    def resolve(self, layers: list[Layer], param_names: list[str]) -> "TrainableSet":
        """Map the config onto one model's parameters."""
        if not layers:
            raise ConfigError("the model has no conv or linear layer to train")
        classifier, convs = layers[-1], layers[:-1]
        ratios: dict[str, float] = {}
        for name in self.params:
            if name not in param_names:
                raise ConfigError(f"parameter {brief(name)} does not exist; the model's parameters are: "
                                  f"{', '.join(param_names)}")
            ratios[name] = 1.0
        if self.n_bias_update > len(convs):
            raise ConfigError(f"n_bias_update={self.n_bias_update} but the model has only {len(convs)} layers "
                              f"(convs and linear layers besides the classifier)")
        for layer in convs[len(convs) - self.n_bias_update:]:
            if layer.bias is not None:
                ratios[layer.bias] = 1.0
        for idx, ratio in zip(self.manual_weight_idx, self.weight_update_ratio):
            if not 0 <= idx < len(convs):
                raise ConfigError(f"manual_weight_idx {idx} is out of range: the model has {len(convs)} layers "
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
