"""Hostile or sloppy sparse-update config files (GitHub issue #10): a strict schema, one
clear `ConfigError` each, never a hang, a traceback or a silent conversion."""

from __future__ import annotations

import time

import pytest

from test_errors import SHAPE, assert_clean_error, model_file, tinytrain  # noqa: F401 - fixture
from tvm_tinytrain.config import SparseUpdateConfig
from tvm_tinytrain.errors import ConfigError

BOMB = ('a: &a ["x","x","x","x","x","x","x","x","x"]\n'
        + "".join(f"{n}: &{n} [{','.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
        + "n_bias_update: [*i,*i,*i,*i,*i,*i,*i,*i,*i]\n")

CASES = [
    ("bomb", BOMB, "anchors and aliases"),
    ("latin1", "params: [caf\xe9]\n".encode("latin1"), "not UTF-8 text (byte 0xe9 at offset 12)"),
    ("utf16", "n_bias_update: 1\n".encode("utf-16"), "not UTF-8 text"),
    ("deep", "n_bias_update: " + "[" * 20000 + "]" * 20000 + "\n", "nested deeper than 8"),
    ("big", "params: [" + "a," * 40000 + "]\n", "more than 65536 bytes"),
    ("bigint", "n_bias_update: " + "9" * 5000 + "\n", "is too large"),
    ("bigint4000", "n_bias_update: " + "9" * 4000 + "\n", "is too large"),
    ("bigint30", "n_bias_update: " + "9" * 30 + "\n", "at most 1000000"),
    ("idx_string", 'manual_weight_idx: "23"\n', "manual_weight_idx must be a list of conv indices (ints), got str '23'"),
    ("classifier_string", 'train_classifier: "no thanks"\n', "train_classifier must be true or false, got str"),
    ("bias_bool", "n_bias_update: true\n", "n_bias_update must be a non-negative integer (at most 1000000), got bool True"),
    ("idx_float", "manual_weight_idx: [2.7]\n", "got an entry float 2.7"),
    ("idx_bool", "manual_weight_idx: [true]\n", "got an entry bool True"),
    ("ratio_bool", "manual_weight_idx: [1]\nweight_update_ratio: [true]\n", "list of numbers, got an entry bool"),
    ("ratio_nan", "manual_weight_idx: [1]\nweight_update_ratio: [.nan]\n", "(0, 1]"),
    ("ratio_bigint", "manual_weight_idx: [1]\nweight_update_ratio: [" + "9" * 35 + "]\n", "(0, 1]"),
    ("params_ints", "params: [1, 2]\n", "params must be a list of parameter names, got an entry int 1"),
    ("duplicate", "n_bias_update: 1\nn_bias_update: 2\n", "line 2: duplicate key 'n_bias_update'"),
    ("merge", "<<: {n_bias_update: 1}\n", "merge keys"),
    ("int_key", "1: 2\n", "keys must be strings"),
    ("python_tag", 'n_bias_update: !!python/object/apply:os.system ["true"]\n', "cannot read"),
    ("two_documents", "n_bias_update: 1\n---\nn_bias_update: 2\n", "single document"),
    ("not_mapping", "- 1\n", "expected a mapping"),
    ("date", "n_bias_update: 2001-12-14\n", "got date"),
]


@pytest.mark.parametrize("name, content, needle", CASES, ids=[c[0] for c in CASES])
def test_hostile_config_refused(tmp_path, name, content, needle):
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    t0 = time.time()
    with pytest.raises(ConfigError) as err:
        SparseUpdateConfig.from_file(path)
    assert time.time() - t0 < 5
    text = str(err.value)
    assert needle in text, text
    assert "\n" not in text and len(text) < 400, text


def test_valid_files_and_code_still_work(tmp_path):
    (tmp_path / "c.yaml").write_text("params: [dw.weight]\nn_bias_update: 0x2\nmanual_weight_idx: [1]\n"
                                     "weight_update_ratio: [1]\ntrain_classifier: false\n")
    cfg = SparseUpdateConfig.from_file(tmp_path / "c.yaml")
    assert cfg == SparseUpdateConfig(params=("dw.weight",), n_bias_update=2, manual_weight_idx=(1,),
                                     weight_update_ratio=(1.0,), train_classifier=False)
    assert type(cfg.weight_update_ratio[0]) is float
    # In code, tuples and lists both work; the same type rules apply.
    assert SparseUpdateConfig(manual_weight_idx=[3]).manual_weight_idx == (3,)
    with pytest.raises(ConfigError, match="got str '23'"):
        SparseUpdateConfig(manual_weight_idx="23")
    with pytest.raises(ConfigError, match="unknown sparse-update key"):
        SparseUpdateConfig.from_dict({("a",): 1})


def test_hostile_config_through_the_cli(model_file, tmp_path):  # noqa: F811 - fixture
    (tmp_path / "bomb.yaml").write_text(BOMB)
    proc = tinytrain("compile", f"{model_file}/nets.py:small", "--input-shape", SHAPE, "--config",
                     tmp_path / "bomb.yaml", "--target", "host", "-o", tmp_path / "p", timeout=120)
    assert_clean_error(proc, "bomb.yaml", "anchors and aliases")
    assert not (tmp_path / "p").exists()


def test_names_from_tvm_are_names(small_imported):
    """Code may pass the Relax function's parameter names (tvm_ffi String, a str subclass)."""
    names = [p.name for p in small_imported.mod["main"].params[1:]]
    cfg = SparseUpdateConfig(params=names)
    assert cfg.params == tuple(str(n) for n in names) and all(type(n) is str for n in cfg.params)
