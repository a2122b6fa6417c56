"""`tinytrain profile`: per-kernel instructions that add up to the step's measured total,
and MAC counts equal to the layer shapes' arithmetic (an independent count)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import INPUT_SHAPE, make_small_net
from tvm_tinytrain.session import run_stream
from tvm_tinytrain.targets.boards import get_board
from tvm_tinytrain.targets.harness import TRAIN, Record
from tvm_tinytrain.targets.lower import lower
from tvm_tinytrain.targets.project import write_project


def conv_macs(conv, out_hw):
    """MACs of a torch Conv2d from its shapes: outputs x (input channels per group) x taps."""
    kh, kw = conv.kernel_size
    return conv.out_channels * out_hw[0] * out_hw[1] * (conv.in_channels // conv.groups) * kh * kw


def test_macs_and_kinds_of_the_forward_convs(small_program):
    net = make_small_net()
    h = INPUT_SHAPE[2]
    expected = [("conv", conv_macs(net.conv0[0], (h, h))), ("depthwise", conv_macs(net.dw, (h, h))),
                ("conv", conv_macs(net.conv2, (h // 4, h // 4)))]
    calls = lower(small_program).schedules["predict"].calls
    convs = [(c.kind, c.macs) for c in calls if c.kind in ("conv", "depthwise", "pointwise")]
    assert convs == expected
    [head] = [c for c in calls if c.kind == "matmul"]
    assert head.macs == net.head.in_features * net.head.out_features


@pytest.mark.slow
@pytest.mark.parametrize("persist", [False, True], ids=["plain", "persist"])
def test_profile_adds_up_to_the_measured_step(small_program, tmp_path, persist):
    board = get_board("cortex-m7")
    project = tmp_path / "proj"
    write_project(small_program, project, board, persist=persist)  # persist: a restore runs first
    proc = subprocess.run([sys.executable, "-m", "tvm_tinytrain.cli", "profile", str(project), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    prof = json.loads(proc.stdout.splitlines()[-1])
    table = json.loads((project / "kernel_calls.json").read_text())
    step = prof["train_step"]
    assert [c["kernel"] for c in step["calls"]] == [c["kernel"] for c in table["train_step"]]
    assert all(c["instructions"] > 0 for c in step["calls"])
    # the calls and the driver around them are the whole step, as counted without splitting
    assert sum(c["instructions"] for c in step["calls"]) + step["driver_instructions"] == step["instructions"]
    x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)  # profile's own sample
    plain = run_stream(board, project, [Record(TRAIN, x, 0)])
    assert plain.train_instructions == [step["instructions"]]
    phases = {g["phase"] for g in step["by_phase_and_kind"]}
    assert phases == {"forward", "backward", "update"}
    assert 0 <= step["driver_instructions"] < 100


def test_profile_refuses_a_host_project(small_program, tmp_path):
    project = tmp_path / "proj"
    write_project(small_program, project, get_board("host"))
    proc = subprocess.run([sys.executable, "-m", "tvm_tinytrain.cli", "profile", str(project)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "tinytrain: error: profiling counts instructions under QEMU" in proc.stderr
