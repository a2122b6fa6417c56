"""Bad input ends in one clear message and exit status 1, never a traceback, and never
leaves a half-written project in place of a good one."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import INPUT_SHAPE, make_small_net

CLI = [sys.executable, "-m", "tvm_tinytrain.cli"]


def tinytrain(*args, env=None, timeout=600):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


def assert_clean_error(proc, *needles):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("tinytrain: error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    (d / "nets.py").write_text(textwrap.dedent("""
        import sys
        sys.path.insert(0, %r)
        from conftest import make_small_net
        from torch import nn

        def small():
            return make_small_net()

        def with_gelu():
            net = make_small_net()
            net.conv0[2] = nn.GELU()
            return net

        def three_unsupported():
            from conftest import ThreeUnsupported
            return ThreeUnsupported()
    """ % os.path.dirname(__file__)))
    torch.save(make_small_net().state_dict(), d / "weights.pt")
    return d


SHAPE = ",".join(map(str, INPUT_SHAPE))


def test_unsupported_op(model_file, tmp_path):
    proc = tinytrain("compile", f"{model_file}/nets.py:with_gelu", "--input-shape", SHAPE, "-o", tmp_path / "p")
    assert_clean_error(proc, "unsupported operator 'gelu'", "conv0.2", "Supported ops:")
    assert not (tmp_path / "p").exists()



def test_every_unsupported_op_in_one_error(model_file, tmp_path):
    """GELU, LeakyReLU and a functional tanh: all three, with their module paths, in the one
    error line, then the supported list."""
    proc = tinytrain("compile", f"{model_file}/nets.py:three_unsupported", "--input-shape", "1,2,8,8",
                     "-o", tmp_path / "p")
    assert_clean_error(proc, "3 ops cannot be trained (in graph order):",
                       "stem.1 (GELU): unsupported operator 'gelu' (aten.gelu);",
                       "block.1 (LeakyReLU): unsupported operator 'leaky_relu'",
                       "block.gate (SoftGate): unsupported operator 'tanh' (aten.tanh) at conftest.py:",
                       ": return x * torch.tanh(x); Supported ops: AdaptiveAvgPool2d")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("flags, needle", [
    (["--weight-idx", "7"], "out of range"),
    (["--weight-idx", "1", "--ratio", "1.5"], "(0, 1]"),
    (["--param", "nope.weight"], "'nope.weight' does not exist"),
])
def test_invalid_config(model_file, tmp_path, flags, needle):
    proc = tinytrain("compile", f"{model_file}/nets.py:small", "--input-shape", SHAPE, "-o", tmp_path / "p", *flags)
    assert_clean_error(proc, needle)


def test_missing_toolchain_names_the_package(model_file, tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # no compiler, no emulator
    proc = tinytrain("compile", f"{model_file}/nets.py:small", "--input-shape", SHAPE, "--target", "cortex-m4",
                     "-o", tmp_path / "p", env=env)
    assert_clean_error(proc, "arm-none-eabi-gcc", "apt-get install", "gcc-arm-none-eabi")


def test_over_budget_says_what_it_needs_and_keeps_the_old_output(model_file, tmp_path):
    out = tmp_path / "p"
    ok = tinytrain("compile", f"{model_file}/nets.py:small", "--input-shape", SHAPE, "--weights",
                   f"{model_file}/weights.pt", "--target", "cortex-m4", "-o", out)
    assert ok.returncode == 0, ok.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    proc = tinytrain("compile", f"{model_file}/nets.py:small", "--input-shape", SHAPE, "--target", "cortex-m4",
                     "--ram-kb", "8", "-o", out, "--param", "dw.weight")
    assert_clean_error(proc, "needs", "bytes of RAM", "budget of 8192", "arena", "trainable weights", "stack")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no temporary folder left behind


def test_weights_file_is_never_unpickled(model_file, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    proc = tinytrain("compile", f"{model_file}/nets.py:small", "--input-shape", SHAPE, "--weights",
                     tmp_path / "evil.pt", "-o", tmp_path / "p")
    assert_clean_error(proc, "only plain tensors")
    assert not (tmp_path / "pwned").exists()


def test_bad_onnx_file(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"not a model")
    proc = tinytrain("compile", tmp_path / "m.onnx", "-o", tmp_path / "p", "--target", "host")
    assert_clean_error(proc, "m.onnx")


@pytest.mark.slow
def test_emulator_timeout_is_reported(model_file, tmp_path):
    out = tmp_path / "p"
    assert tinytrain("compile", f"{model_file}/nets.py:small", "--input-shape", SHAPE, "--target", "riscv32",
                     "-o", out).returncode == 0
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, *INPUT_SHAPE[1:])).astype(np.float32)
    y = rng.integers(0, 4, 5000)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    proc = tinytrain("run", out, "--data", tmp_path / "d.npz", "--timeout", "0.3", "--json")
    assert_clean_error(proc, "timed out")


def test_run_rejects_bad_data(model_file, tmp_path):
    out = tmp_path / "p"
    assert tinytrain("compile", f"{model_file}/nets.py:small", "--input-shape", SHAPE, "--target", "host",
                     "-o", out).returncode == 0
    np.savez(tmp_path / "d.npz", x_train=np.zeros((2, 3)))
    assert_clean_error(tinytrain("run", out, "--data", tmp_path / "d.npz"), "y_train")
    x = np.zeros((2, *INPUT_SHAPE[1:]), np.float32)
    np.savez(tmp_path / "d.npz", x_train=x[:, :1], y_train=[0, 1], x_test=x, y_test=[0, 1])
    assert_clean_error(tinytrain("run", out, "--data", tmp_path / "d.npz"), "the model takes (1, 2, 8, 8)")
    np.savez(tmp_path / "d.npz", x_train=x, y_train=[0, 9], x_test=x, y_test=[0, 1])
    assert_clean_error(tinytrain("run", out, "--data", tmp_path / "d.npz"), "label 9", "classes 0..3")
    assert_clean_error(tinytrain("run", tmp_path, "--data", tmp_path / "d.npz"), "not a project")
