"""Long runs on an emulated Cortex-M7, in lockstep with the host build of the same program.

The reference everywhere is the host build (gcc, x86-64) of the very same generated C
project, fed the very same input.bin; the board is Cortex-M7 on QEMU mps2-an500 (and RV32
for the divergence stop).

- `test_10000_steps_bit_identical_to_the_host_build`: the digits demo's int8 + QAS program
  (`tinytrain demo`'s network, pretraining, quantization, sparse update and options) trains
  for 10,000 steps, the demo's 627-sample stream of digits 5-9 repeated (16 passes, cut at
  10,000), with a DUMP of every parameter at the start and after every 1,000 steps. Proven:
  all 10,000 losses, all 11 checkpoints and the held-out logits before and after are equal
  bit for bit on the board and the host; the losses stay finite and fall; the held-out
  accuracy after is high (printed, run with -s to see it). The program is built as shipped:
  it carries its own expf/logf (targets/runtime/tt_math.c), since the C libraries' differ in
  the last bit often enough (picolibc's miss the correctly rounded result for about 6 % of
  expf and 8 % of logf inputs here, glibc's for 0.06 % and 0.5 %) to make host and board
  part after a few dozen steps.
- `test_diverging_step_stops_with_the_weights_kept`: a learning rate (1e36) that makes the
  loss overflow after a few steps, on the conftest network (float32; an int8 model's loss is
  bounded by its int8 logits): the board reports `error the loss became NaN or Inf at record
  N` at the same record as the host build, exits with status 3 and executes nothing after
  it, and the parameters it prints on that error path (main.c dumps them there) are bit for
  bit those of the DUMP record just before the failing step, and those of the host build.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from conftest import INPUT_SHAPE, SPARSE, samples
from tvm_tinytrain import demo
from tvm_tinytrain.errors import RunError
from tvm_tinytrain.frontend.torch_frontend import import_torch
from tvm_tinytrain.pipeline import TrainOptions, build_training_program
from tvm_tinytrain.quantize import post_training_quantize
from tvm_tinytrain.targets.boards import build, get_board, run
from tvm_tinytrain.targets.harness import DUMP, PREDICT, TRAIN, Record, _split_dumps, parse_output, write_input
from tvm_tinytrain.targets.project import write_project
from tvm_tinytrain.session import run_stream

pytestmark = pytest.mark.slow

STEPS = 10_000
CHECKPOINT_EVERY = 1_000

# --------------------------------------------------------------------------- 10,000 steps

@pytest.fixture(scope="module")
def digits():
    return demo.load_digits_split()


@pytest.fixture(scope="module")
def demo_program(digits):
    """What `tinytrain demo` compiles (int8 + QAS): the same calls, as in cli._cmd_demo."""
    (x_old, y_old), _, _ = digits
    model = demo.pretrain(x_old, y_old)
    imported = import_torch(model, torch.zeros(demo.INPUT_SHAPE), source="tvm_tinytrain.demo.DigitsNet")
    imported = post_training_quantize(imported, x_old[:demo.CALIBRATION_SAMPLES])
    return build_training_program(imported, demo.DEMO_CONFIG, demo.DEMO_OPTIONS["int8"])


@pytest.fixture(scope="module")
def long_stream(digits):
    """Held-out predictions, DUMP, then 10,000 steps with a DUMP after every 1,000, then
    the held-out predictions again."""
    _, (x_train, y_train), (x_test, _) = digits
    test = [Record(PREDICT, x) for x in x_test]
    records = test + [Record(DUMP)]
    for step in range(STEPS):
        i = step % len(x_train)
        records.append(Record(TRAIN, x_train[i], int(y_train[i])))
        if (step + 1) % CHECKPOINT_EVERY == 0:
            records.append(Record(DUMP))
    return records + test


def _run(program, board_name, records, folder):
    board = get_board(board_name)
    write_project(program, folder, board)
    start = time.monotonic()
    result = run_stream(board, folder, records)
    print(f"\n{board_name}: build and {len(result.output.losses)} steps in {time.monotonic() - start:.1f} s")
    return result


@pytest.fixture(scope="module")
def lockstep_runs(demo_program, long_stream, tmp_path_factory):
    """(host result, Cortex-M7 result) of the same program on the same records."""
    return tuple(_run(demo_program, name, long_stream, tmp_path_factory.mktemp(f"long-{name}") / "proj")
                 for name in ("host", "cortex-m7"))


def _bits(values) -> np.ndarray:
    return np.asarray(values, np.float32).view(np.uint32)


def _check_stable(result, digits, label):
    """Finite losses that fall and stay down; held-out accuracy far above chance."""
    _, _, (x_test, y_test) = digits
    out, n = result.output, len(x_test)
    losses = np.array(out.losses)
    assert len(losses) == STEPS
    assert np.isfinite(losses).all()
    windows = losses.reshape(-1, CHECKPOINT_EVERY).mean(axis=1)
    before = (np.array(out.predictions[:n]) == y_test).mean()
    after = (np.array(out.predictions[n:]) == y_test).mean()
    print(f"{label}: held-out accuracy {before:.3f} before, {after:.3f} after {STEPS} steps; "
          f"mean loss per 1,000 steps: {' '.join(f'{w:.3f}' for w in windows)}")
    assert windows[-1] < 0.6 * windows[0]
    assert windows[-1] <= 1.1 * windows.min()  # no late blow-up
    assert after >= 0.9 and after >= before + 0.5
    return windows, after


def test_10000_steps_bit_identical_to_the_host_build(lockstep_runs, demo_program, digits):
    host, board = lockstep_runs
    assert board.ran_on.startswith("qemu-system-arm mps2-an500")
    assert len(board.train_instructions) == STEPS and min(board.train_instructions) > 1_000_000
    _check_stable(board, digits, "cortex-m7")

    h, b = host.output, board.output
    assert np.array_equal(_bits(b.losses), _bits(h.losses)), \
        f"first different loss at step {np.flatnonzero(_bits(b.losses) != _bits(h.losses))[0]}"
    assert len(b.params) == len(h.params) == STEPS // CHECKPOINT_EVERY + 1
    for k, (bp, hp) in enumerate(zip(b.params, h.params)):
        assert bp.keys() == hp.keys() == demo_program.params.keys()
        for name in bp:
            assert np.array_equal(bp[name].view(np.uint8), hp[name].view(np.uint8)), \
                f"{name} differs at checkpoint {k} (after {k * CHECKPOINT_EVERY} steps)"
        if k:  # it keeps learning: every 1,000 steps change the trainable weights
            assert any(not np.array_equal(bp[n], b.params[k - 1][n]) for n in demo_program.trainable.names)
    for name, value in demo_program.params.items():
        if name not in demo_program.trainable:
            assert np.array_equal(b.params[-1][name], value.ravel()), f"frozen {name} changed"
    assert len(b.logits) == len(h.logits) == 2 * len(digits[2][0])
    assert all(np.array_equal(_bits(x), _bits(y)) for x, y in zip(b.logits, h.logits))


# --------------------------------------------------------------------------- divergence

DIVERGING_LR = 1e36  # the head's weights grow until a logit overflows, after about 10 steps


@pytest.fixture(scope="module")
def diverging_program(small_imported):
    return build_training_program(small_imported, SPARSE, TrainOptions(lr=DIVERGING_LR, momentum=0.9))


def _run_until_error(program, board_name, folder):
    """Train with a DUMP after every step until the program stops on a non-finite loss.
    Returns (every line it printed, the records)."""
    xs, ys = samples(60, seed=3)
    records = [r for x, y in zip(xs, ys) for r in (Record(TRAIN, x, int(y)), Record(DUMP))]
    board = get_board(board_name)
    write_project(program, folder, board)
    built = build(board, folder)
    write_input(folder / "input.bin", records, int(np.prod(INPUT_SHAPE)))
    lines: list[str] = []
    with pytest.raises(RunError, match=r"exited with code 3(.|\n)*error the loss became NaN or Inf at record \d+"):
        run(board, built, cwd=folder, on_line=lines.append)
    with pytest.raises(RunError, match=r"the training program reported: the loss became NaN or Inf at record \d+ "
                                       r"\(training diverged: lower the learning rate\); the weights were left as "
                                       r"they were before this step"):
        parse_output(lines, records)
    return lines, records


@pytest.fixture(scope="module")
def host_divergence(diverging_program, tmp_path_factory):
    return _run_until_error(diverging_program, "host", tmp_path_factory.mktemp("diverge-host") / "proj")


@pytest.mark.parametrize("board_name", ["cortex-m7", "riscv32"])
def test_diverging_step_stops_with_the_weights_kept(board_name, diverging_program, host_divergence, tmp_path):
    start = time.monotonic()
    lines, records = _run_until_error(diverging_program, board_name, tmp_path / "proj")
    print(f"\n{board_name}: ran to the divergence in {time.monotonic() - start:.1f} s")
    host_lines, _ = host_divergence

    errors = [ln for ln in lines if ln.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0], "nothing may run after the error"
    failed = int(errors[0].split("at record ")[1].split()[0])
    assert records[failed].op == TRAIN and failed >= 6, failed  # a few good steps came first
    losses = [ln for ln in lines if ln.startswith("loss")]
    assert len(losses) == failed // 2 and not any(ln.startswith(("done", "stack")) for ln in lines)
    assert np.isfinite(np.array([int(ln.split()[2], 16) for ln in losses], np.uint32).view(np.float32)).all()

    # DUMP records 1, 3, ..., failed - 1, then the dump printed on the error path
    dumps = _split_dumps(lines, failed // 2 + 1)
    before, kept = dumps[-2], dumps[-1]
    for name in diverging_program.params:
        assert np.array_equal(kept[name].view(np.uint32), before[name].view(np.uint32)), \
            f"{name} changed in the step that failed"
        assert np.isfinite(kept[name]).all(), name
    assert any(not np.array_equal(kept[n], diverging_program.params[n].ravel())
               for n in diverging_program.trainable.names), "the steps before the failure trained"

    # the host build: the same error at the same record, the same losses and weights, bit for bit
    assert lines == host_lines
