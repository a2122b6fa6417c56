import pytest

from tvm_tinytrain.cli import _parser, config_from_args
from tvm_tinytrain.config import SparseUpdateConfig
from tvm_tinytrain.errors import ConfigError
from tvm_tinytrain.layers import find_layers


def _resolve(imported, cfg):
    main = imported.mod["main"]
    return cfg.resolve(find_layers(main), [p.name for p in main.params[1:]])


def test_layers_in_graph_order(small_imported):
    layers = find_layers(small_imported.mod["main"])
    assert [(l.kind, l.weight, l.bias) for l in layers] == [
        ("conv2d", "conv0.0.weight", "conv0.0.bias"),
        ("conv2d", "dw.weight", "dw.bias"),
        ("conv2d", "conv2.weight", "conv2.bias"),
        ("linear", "head.weight", "head.bias"),
    ]
    assert layers[1].channel_axis == 0  # depthwise: sub-tensor updates slice output channels


def test_tiny_training_keys(small_imported):
    cfg = SparseUpdateConfig(n_bias_update=2, manual_weight_idx=[2], weight_update_ratio=[0.5])
    ts = _resolve(small_imported, cfg)
    assert ts.names == ("dw.bias", "conv2.weight", "conv2.bias", "head.weight", "head.bias")
    assert ts.ratio["conv2.weight"] == 0.5 and ts.ratio["head.weight"] == 1.0


def test_explicit_names_and_classifier_always(small_imported):
    ts = _resolve(small_imported, SparseUpdateConfig(params=["dw.weight"]))
    assert ts.names == ("dw.weight", "head.weight", "head.bias")
    ts = _resolve(small_imported, SparseUpdateConfig(params=["dw.weight"], train_classifier=False))
    assert ts.names == ("dw.weight",)


@pytest.mark.parametrize("cfg, message", [
    (dict(manual_weight_idx=[3]), "out of range"),
    (dict(manual_weight_idx=[-1]), "out of range"),
    (dict(n_bias_update=4), r"only 3 layers \(convs and linear layers besides the classifier\)"),
    (dict(params=["nope.weight"]), "'nope.weight' does not exist"),
])
def test_invalid_for_this_model(small_imported, cfg, message):
    with pytest.raises(ConfigError, match=message):
        _resolve(small_imported, SparseUpdateConfig(**cfg))


@pytest.mark.parametrize("cfg, message", [
    (dict(manual_weight_idx=[1], weight_update_ratio=[0.0]), r"\(0, 1\]"),
    (dict(manual_weight_idx=[1], weight_update_ratio=[1.5]), r"\(0, 1\]"),
    (dict(manual_weight_idx=[1, 2], weight_update_ratio=[0.5]), "one ratio per conv"),
    (dict(manual_weight_idx=[1, 1]), "twice"),
    (dict(n_bias_update=-1), "non-negative"),
    (dict(bias_update=3), "unknown sparse-update key"),
])
def test_invalid_config(cfg, message):
    with pytest.raises(ConfigError, match=message):
        SparseUpdateConfig.from_dict(cfg)


def test_yaml_and_json_files(tmp_path):
    (tmp_path / "c.yaml").write_text("n_bias_update: 2\nmanual_weight_idx: [1, 2]\nweight_update_ratio: [1, 0.25]\n")
    (tmp_path / "c.json").write_text('{"n_bias_update": 2, "manual_weight_idx": [1, 2], "weight_update_ratio": [1, 0.25]}')
    a = SparseUpdateConfig.from_file(tmp_path / "c.yaml")
    assert a == SparseUpdateConfig.from_file(tmp_path / "c.json")
    assert a.weight_update_ratio == (1.0, 0.25)
    (tmp_path / "bad.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        SparseUpdateConfig.from_file(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        SparseUpdateConfig.from_file(tmp_path / "missing.yaml")


def test_cli_flags_override_the_file(tmp_path):
    (tmp_path / "c.yaml").write_text("n_bias_update: 1\nparams: [dw.weight]\n")
    args = _parser().parse_args(["compile", "m.onnx", "-o", "out", "--config", str(tmp_path / "c.yaml"),
                                 "--n-bias-update", "2", "--weight-idx", "0", "2", "--ratio", "1", "0.5",
                                 "--param", "conv0.0.bias"])
    cfg = config_from_args(args)
    assert cfg.n_bias_update == 2
    assert cfg.params == ("dw.weight", "conv0.0.bias")
    assert cfg.manual_weight_idx == (0, 2) and cfg.weight_update_ratio == (1.0, 0.5)


def test_paper_schemes_by_name():
    cfg = SparseUpdateConfig.scheme("mcunet-49kb")
    assert cfg.n_bias_update == 20
    assert cfg.manual_weight_idx == (24, 27, 30)  # ratio-0 convs train no weight
    assert cfg.weight_update_ratio == (0.25, 0.5, 0.5)
    assert SparseUpdateConfig.scheme("mcunet-99kb").weight_update_ratio == (1, 1, 1, 1, 0.125, 0.25)
    with pytest.raises(ConfigError, match="unknown scheme"):
        SparseUpdateConfig.scheme("mcunet-1kb")
    args = _parser().parse_args(["compile", "m.onnx", "-o", "o", "--scheme", "mcunet-74kb"])
    assert config_from_args(args) == SparseUpdateConfig.scheme("mcunet-74kb")


def test_default_learning_rate_is_the_measured_step(tmp_path):
    """Without --lr, `compile` trains with 0.01 x (1 - momentum), the step bench/qas.py
    measured best for int8 + QAS and float32 fine-tuning (0.05, the former default, diverged
    on int8 + QAS), says so, and puts that rate into the SGD kernels; --lr overrides it."""
    import os
    import textwrap

    from conftest import INPUT_SHAPE
    from test_errors import tinytrain

    (tmp_path / "seq.py").write_text(textwrap.dedent("""
        import sys
        sys.path.insert(0, %r)
        from conftest import make_sequential
    """ % os.path.dirname(__file__)))
    shape = ",".join(map(str, INPUT_SHAPE))
    cases = ((["--momentum", "0.9"], "learning rate 0.001 (default), momentum 0.9", "1.000000e-03f"),
             ([], "learning rate 0.01 (default), momentum 0", "1.000000e-02f"),
             (["--lr", "0.03"], "learning rate 0.03, momentum 0", "3.000000e-02f"))
    for i, (flags, line, literal) in enumerate(cases):
        out = tmp_path / f"out{i}"
        proc = tinytrain("compile", f"{tmp_path / 'seq.py'}:make_sequential", "--input-shape", shape,
                         "--target", "host", "-o", out, *flags)
        assert proc.returncode == 0, proc.stderr
        assert line in proc.stdout
        assert literal in (out / "tinytrain_kernels.c").read_text()
