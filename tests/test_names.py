"""Any model's names give C that builds (issue 11): a bare `nn.Sequential` names its
parameters `5.0.weight`, torch's ONNX exporter `onnx::Conv_27`; and `compile` never writes
a project whose C does not compile."""

import json
import os
import subprocess
import textwrap
import warnings

import numpy as np
import pytest
import torch
from onnx import helper

from conftest import INPUT_SHAPE, make_sequential, torch_sgd_reference
from test_errors import tinytrain
from tvm_tinytrain import cli
from tvm_tinytrain.c_names import CNamer, c_comment, c_identifier, c_string
from tvm_tinytrain.config import SparseUpdateConfig
from tvm_tinytrain.frontend.onnx_frontend import _module_path, import_onnx
from tvm_tinytrain.frontend.torch_frontend import import_torch
from tvm_tinytrain.pipeline import TrainOptions, build_training_program
from tvm_tinytrain.targets.boards import get_board
from tvm_tinytrain.targets.harness import DUMP, TRAIN, Record
from tvm_tinytrain.session import run_stream

SHAPE = ",".join(map(str, INPUT_SHAPE))
N_STEPS = 3


# The BN-folded first conv by name, the last conv on half its channels, the last bias, momentum.
FLAGS = ["--param", "0.weight", "--weight-idx", "2", "--ratio", "0.5", "--n-bias-update", "1",
         "--lr", "0.05", "--momentum", "0.9"]
CONFIG = SparseUpdateConfig(params=("0.weight",), manual_weight_idx=(2,), weight_update_ratio=(0.5,),
                            n_bias_update=1)
OPTIONS = TrainOptions(lr=0.05, momentum=0.9)


@pytest.fixture(scope="module")
def sequential_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("seq")
    (d / "seq.py").write_text(textwrap.dedent("""
        import sys
        sys.path.insert(0, %r)
        from conftest import make_sequential
    """ % os.path.dirname(__file__)))
    return d / "seq.py"


def records():
    rng = np.random.default_rng(5)
    xs = rng.standard_normal((N_STEPS, *INPUT_SHAPE[1:])).astype(np.float32)
    ys = rng.integers(0, 4, N_STEPS)
    return xs, ys, [Record(TRAIN, x, int(y)) for x, y in zip(xs, ys)] + [Record(DUMP)]


def assert_trains_like_torch(project, target, program):
    """Build the compiled folder, run N_STEPS steps, compare with torch autograd + SGD; the
    parameters come back under their source names (tt_params[])."""
    report = json.loads((project / "memory_report.json").read_text())
    assert report["model"]["trainable"] == list(program.trainable.names)
    xs, ys, recs = records()
    out = run_stream(get_board(target), project, recs).output
    ref_losses, ref_params = torch_sgd_reference(make_sequential(), program, xs, ys)
    np.testing.assert_allclose(out.losses, ref_losses, rtol=1e-5)
    assert "5.0.weight" in out.params[0] and "3.0.weight" in out.params[0]
    for name in program.trainable.names:
        np.testing.assert_allclose(out.params[0][name], ref_params[name].ravel(), rtol=1e-5, atol=1e-6,
                                   err_msg=name)


# ---------------------------------------------------------------- the sanitizer


@pytest.mark.parametrize("name, ident", [
    ("features_0_weight", "features_0_weight"),  # valid names are left alone
    ("5.c1.weight", "t_5_c1_weight"),            # a leading digit
    ("5.0.weight", "t_5_0_weight"),
    ("onnx::Conv_27", "onnx__Conv_27"),
    ("/features/0/Conv", "t__features_0_Conv"),  # a leading underscore is reserved in C
    ("a-b c", "a_b_c"),
    ("poids_é", "poids__"),                      # ASCII identifiers only
    ("int", "t_int"), ("static", "t_static"), ("bool", "t_bool"),  # keywords, C23's too
    ("expf", "t_expf"), ("uint8_t", "t_uint8_t"), ("DLTensor", "t_DLTensor"),  # what the C includes
    ("tt_arena", "t_tt_arena"), ("T_x", "t_T_x"), ("shape_x", "t_shape_x"),  # the driver's prefixes
    ("", "t_"),
])
def test_c_identifier(name, ident):
    assert c_identifier(name) == ident
    assert c_identifier(ident) == ident  # idempotent


def test_c_identifier_is_always_a_c_identifier():
    rng = np.random.default_rng(0)
    alphabet = list("aZ09_.-:/ *\"\\é") + ["int", "tt_", "while"]
    for _ in range(500):
        name = "".join(rng.choice(alphabet, rng.integers(0, 6)))
        ident = c_identifier(name)
        assert ident.isascii() and ident.replace("_", "a").isalnum() and not ident[0].isdigit(), name
        assert not ident.startswith("_") and ident not in ("int", "while")


def test_namer_unique_and_deterministic():
    def names():
        namer = CNamer()
        return [namer["a.b"], namer["a_b"], namer["a.b"], namer.fresh("a_b_1"), namer.fresh("label"),
                namer.fresh("lv"), namer.fresh("lv"), namer["5.0.weight"], namer["5_0.weight"]]

    first = names()
    assert first == ["a_b", "a_b_1", "a_b", "a_b_1_1", "label_1", "lv", "lv_1", "t_5_0_weight", "t_5_0_weight_1"]
    assert names() == first


def test_source_names_survive_in_c_strings_and_comments(tmp_path):
    """tt_params[] holds each name's exact bytes; a comment cannot be closed by one."""
    names = ["5.0.weight", 'a"b\\c', "??/", "poids_é\n", "x*/y/*z"]
    body = "\n".join(f"  fputs({c_string(n)}, stdout); putchar(0); /* {c_comment(n)} */" for n in names)
    (tmp_path / "t.c").write_text(f"#include <stdio.h>\nint main(void) {{\n{body}\n  return 0;\n}}\n")
    subprocess.run(["gcc", "-Wall", "-Wextra", "-Werror", "-o", tmp_path / "t", tmp_path / "t.c"], check=True)
    out = subprocess.run([tmp_path / "t"], capture_output=True, check=True).stdout
    assert out.split(b"\0")[:-1] == [n.encode() for n in names]


# ---------------------------------------------------------------- models named by torch


@pytest.mark.parametrize("target, flags", [
    ("host", []),
    # without fused kernels TVM's kernels take the parameters themselves, named after them
    ("host", ["--no-memory-pass", "fuse_kernels"]),
    pytest.param("riscv32", ["--no-memory-pass", "fuse_kernels"], marks=pytest.mark.slow),
], ids=["host", "host-unfused", "riscv32-unfused"])
def test_bare_sequential_compiles_builds_and_trains(sequential_file, tmp_path, target, flags):
    out = tmp_path / "p"
    proc = tinytrain("compile", f"{sequential_file}:make_sequential", "--input-shape", SHAPE,
                     *FLAGS, *flags, "--target", target, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "its C compiles" in proc.stdout
    params_h = (out / "tinytrain_params.h").read_text()
    assert "extern float t_5_0_weight[24]; /* 5.0.weight */" in params_h  # trained channels, RAM
    assert '{"5.0.weight", t_5_0_weight, t_5_0_weight_frozen,' in (out / "tinytrain_model.c").read_text()
    assert "/* 3.0.weight: 6x1x3x3 float32" in (out / "tinytrain_params.c").read_text()
    program = build_training_program(import_torch(make_sequential(), torch.zeros(INPUT_SHAPE)), CONFIG, OPTIONS)
    assert_trains_like_torch(out, target, program)


def test_sequential_exported_to_onnx_keeps_module_names(tmp_path):
    """torch's exporter folds the batch norm into the first conv and calls the result
    `onnx::Conv_*`; the frontend names it after its module, `0.weight`, so a config can."""
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(make_sequential(), (torch.zeros(INPUT_SHAPE),), str(tmp_path / "seq.onnx"), dynamo=False)
    exported = {t.name for t in onnx.load(str(tmp_path / "seq.onnx")).graph.initializer}
    assert "0.weight" not in exported and any(n.startswith("onnx::Conv_") for n in exported)
    out = tmp_path / "p"
    proc = tinytrain("compile", tmp_path / "seq.onnx", *FLAGS, "--target", "host", "-o", out)
    assert proc.returncode == 0, proc.stderr
    program = build_training_program(import_onnx(tmp_path / "seq.onnx"), CONFIG, OPTIONS)
    assert list(program.params)[:2] == ["0.weight", "0.bias"]
    assert_trains_like_torch(out, "host", program)


@pytest.mark.parametrize("node, path", [
    ("/0/Conv", "0"), ("/5/c1/Conv", "5.c1"), ("/3/3.0/Conv", "3.0"),
    ("/features/features.1/c1/c1.0/Conv", "features.1.c1.0"),     # a Sequential inside a module
    ("/features/features.0/features.0.0/Conv", "features.0.0"),   # Sequentials inside Sequentials
    ("/Conv", None), ("Conv_3", None), ("/a//Conv", None), ("", None),
])
def test_module_path_from_torch_node_names(node, path):
    assert _module_path(helper.make_node("Conv", ["x", "w"], ["y"], name=node)) == path


@pytest.mark.parametrize("scopes, path", [
    ("['', 'fc', 'linear']", "fc"), ("['', '0', '0.1', 'conv2d']", "0.1"),
    ("['', 'features.3.conv', 'conv2d']", "features.3.conv"), ("['', 'linear']", None),
    ("['', '__import__(\"os\")', 'x']", None), ("__import__('os').system('x')", None), ("[1, 2, 3]", None),
    ("[" * 5000, None),
])
def test_module_path_from_dynamo_name_scopes(scopes, path):
    """The dynamo exporter's metadata, read as a literal (never run), a module path or nothing."""
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="node_MatMul_14")
    helper.set_metadata_props(node, {"pkg.torch.onnx.name_scopes": scopes})
    assert _module_path(node) == path


def test_onnx_names_stay_when_the_file_does_not_follow_module_paths(tmp_path):
    """No evidence, no renaming: a file whose named weights are not `<node path>.weight`."""
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(make_sequential(), (torch.zeros(INPUT_SHAPE),), str(tmp_path / "seq.onnx"), dynamo=False)
    model = onnx.load(str(tmp_path / "seq.onnx"))  # the Linear's weight, named by another rule
    next(t for t in model.graph.initializer if t.name == "8.weight").name = "head.weight"
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    gemm.input[1] = "head.weight"
    onnx.save(model, str(tmp_path / "other.onnx"))
    names = list(import_onnx(tmp_path / "other.onnx").params)
    assert "0.weight" not in names and any(n.startswith("Conv_") for n in names)


# ---------------------------------------------------------------- C that does not compile


def test_c_that_does_not_compile_is_an_error_and_keeps_the_old_output(sequential_file, tmp_path, monkeypatch,
                                                                       capsys):
    """A sanitizer that let leading digits through (the bug of issue 11): `compile` stops with
    the compiler's first errors instead of "wrote ...", and the previous folder stays."""
    out = tmp_path / "p"
    args = ["compile", f"{sequential_file}:make_sequential", "--input-shape", SHAPE,
            "--target", "host", "-o", str(out)]
    assert cli.main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()

    import tvm_tinytrain.c_names
    import tvm_tinytrain.targets.lower

    def dots_only(name):
        return name.replace(".", "_")

    monkeypatch.setattr(tvm_tinytrain.c_names, "c_identifier", dots_only)
    monkeypatch.setattr(tvm_tinytrain.targets.lower, "c_identifier", dots_only)
    assert cli.main(args) == 1
    captured = capsys.readouterr()
    assert "wrote" not in captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("tinytrain: error:")]
    assert len(errors) == 1 and len(captured.err.splitlines()) == 1, captured.err
    for needle in ("generated C that does not compile", str(out), "left as it was", "gcc -fsyntax-only",
                   "error: invalid suffix", "more errors"):
        assert needle in errors[0], (needle, errors[0])
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no temporary folder left behind


def test_the_project_folder_has_a_check_target(sequential_file, tmp_path):
    """`make check`, what compile runs: syntax and types only, no objects left behind."""
    out = tmp_path / "p"
    proc = tinytrain("compile", f"{sequential_file}:make_sequential", "--input-shape", SHAPE,
                     "--target", "cortex-m4", "-o", out)
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in out.iterdir())
    check = subprocess.run(["make", "-C", str(out), "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "-fsyntax-only" in check.stdout and "-mcpu=cortex-m4" in check.stdout
    assert sorted(p.name for p in out.iterdir()) == files
    (out / "tinytrain_params.c").write_text((out / "tinytrain_params.c").read_text() + "\nint 5_x;\n")
    assert subprocess.run(["make", "-C", str(out), "check"], capture_output=True).returncode != 0
