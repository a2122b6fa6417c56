"""Write a self-contained C project for one board, atomically.

The folder holds everything `make` needs: the generated sources, the runtime and
harness, the few TVM headers the kernels include, the board files with a linker script
sized to the budget, and `memory_report.json`. It is written beside the destination,
checked to compile for the board (`make check`: the compiler's syntax and type checks,
seconds), and swapped in only then, so a failed compile leaves the previous output intact
and a folder that is there builds.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import tvm
import tvm_ffi

from tvm_tinytrain.errors import BudgetError, BuildError, TinyTrainError
from tvm_tinytrain.pipeline import TrainingProgram

from .boards import FLASH_SECTOR_BYTES, Board, check_sources, write_board_files
from .c_emitter import EmittedProgram, emit, peak_call, plan_arena
from .lower import lower, plain_schedules

RUNTIME_DIR = Path(__file__).resolve().parent / "runtime"
# The TVM headers the kernels and the driver include (Apache-2.0, shipped with TVM).
TVM_HEADERS = {
    Path(tvm_ffi.__file__).parent / "include": ["tvm/ffi/c_api.h", "tvm/ffi/extra/c_env_api.h",
                                                "dlpack/dlpack.h"],
    Path(tvm.__file__).parent / "include": ["tvm/runtime/base.h", "tvm/runtime/c_backend_api.h"],
}
# RAM the harness and runtime add besides the model: logits, read chunk, printf state.
HARNESS_RAM_ESTIMATE = 512


@dataclass
class MemoryEstimate:
    """What the program needs before linking (the linker map has the final word)."""

    arena_bytes: int
    arena_at_peak: dict[str, int]   # what the arena holds at train_step's peak, by kind
    peak_call: str                  # where in train_step that peak is
    trainable_bytes: int
    momentum_bytes: int
    io_bytes: int
    stack_bytes: int
    frozen_flash_bytes: int
    persist_flash_bytes: int = 0    # --persist: the two state slots, at the end of the flash budget

    @property
    def ram_bytes(self) -> int:
        return self.arena_bytes + self.trainable_bytes + self.momentum_bytes + self.io_bytes + self.stack_bytes


def estimate_memory(program: TrainingProgram, stack_bytes: int = 8 * 1024) -> MemoryEstimate:
    """What `write_project` plans for `program`, without building its kernels to C: the
    same schedules and planner, the kernels' workspaces as legalized (the micro-kernels'
    could differ; on the tested models and MCUNet's schemes every figure is the same,
    tests/test_search.py). `tinytrain search` prices schemes with it; the scheme it returns
    is compiled for real."""
    schedules, values = plain_schedules(program)
    plans, arena, _ = plan_arena(schedules)
    trainable = sum(v.nbytes for n, v in values.items() if n in program.trainable)
    frozen = sum(v.nbytes for n, v in values.items() if n not in program.trainable)
    consts = {t.name: t.nbytes for s in schedules.values() for c in s.calls for t in c.args if t.storage == "const"}
    momentum = sum(4 * math.prod(shape) for shape in program.momentum_shapes.values())
    return MemoryEstimate(arena, plans["train_step"].live_at_peak, peak_call(schedules["train_step"],
                          plans["train_step"]), trainable, momentum,
                          _io_bytes(program), stack_bytes, frozen + sum(consts.values()))


def _io_bytes(program: TrainingProgram) -> int:
    return 4 * program.num_classes + HARNESS_RAM_ESTIMATE  # logits; the sample lives in the arena (tt_input)


def write_project(program: TrainingProgram, out_dir: Path, board: Board, *, ram_bytes: int = 256 * 1024,
                  flash_bytes: int = 1024 * 1024, stack_bytes: int = 8 * 1024,
                  emitted: EmittedProgram | None = None,
                  persist: bool = False) -> tuple[EmittedProgram, MemoryEstimate]:
    """`emitted`: the program's C sources if the caller already has them (lowering is slow).
    `persist`: the program can keep its learned state in flash across resets (tt_save,
    tt_restore; off by default, then it costs nothing)."""
    emitted = emitted or emit(program, lower(program), persist=persist)
    if (emitted.persist is not None) != persist:
        raise TinyTrainError(f"the given emitted program was emitted with persist={not persist}")
    persist_bytes = emitted.persist.area_bytes if emitted.persist else 0
    estimate = MemoryEstimate(emitted.arena_bytes, emitted.plans["train_step"].live_at_peak, emitted.peak_call,
                              emitted.trainable_bytes, emitted.momentum_bytes,
                              _io_bytes(program), stack_bytes, emitted.frozen_bytes, persist_bytes)
    if board.is_emulated:  # the host has no budget to keep: it builds the reference
        _check_budget(estimate, ram_bytes, flash_bytes, board)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name, text in emitted.files.items():
            (tmp / name).write_text(text)
        for src in sorted(RUNTIME_DIR.iterdir()):
            if src.suffix in (".c", ".h") and (persist or not src.stem == "tt_persist"):
                shutil.copy(src, tmp / src.name)
        for root, headers in TVM_HEADERS.items():
            for h in headers:
                (tmp / "include" / h).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(root / h, tmp / "include" / h)
        write_board_files(board, tmp, ram_bytes=ram_bytes, flash_bytes=flash_bytes, stack_bytes=stack_bytes,
                          persist_bytes=persist_bytes)
        report = memory_report(emitted, estimate, board, ram_bytes, flash_bytes)
        report["model"] = {"source": program.source, "input_shape": list(program.input_shape),
                           "num_classes": program.num_classes, "loss": program.options.loss,
                           "trainable": list(program.trainable.names)}
        (tmp / "memory_report.json").write_text(json.dumps(report, indent=2) + "\n")
        try:
            check_sources(board, tmp)
        except BuildError as err:
            raise BuildError(f"tvm-tinytrain generated C that does not compile, so {out_dir} was left as it was "
                             f"(a bug in tvm-tinytrain: please report it with the model): {err}") from None
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return emitted, estimate


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace out_dir by tmp with two renames; the old folder is removed only after."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_budget(est: MemoryEstimate, ram_bytes: int, flash_bytes: int, board: Board) -> None:
    if est.ram_bytes > ram_bytes:
        raise BudgetError(
            f"the training program needs {est.ram_bytes} bytes of RAM but {board.name} has a budget of "
            f"{ram_bytes}: arena {est.arena_bytes} ({_kinds(est.arena_at_peak)}; {est.peak_call}), trainable weights "
            f"{est.trainable_bytes}, momentum {est.momentum_bytes}, input/output buffers {est.io_bytes}, "
            f"stack {est.stack_bytes}. Train fewer layers, or raise --ram-kb.")
    flash_needed = est.frozen_flash_bytes + est.trainable_bytes + est.persist_flash_bytes
    if flash_needed > flash_bytes:
        persist = (f", persistence area (2 state slots) {est.persist_flash_bytes}"
                   if est.persist_flash_bytes else "")
        raise BudgetError(
            f"the weights alone need {flash_needed} bytes of flash but {board.name} has a budget of "
            f"{flash_bytes}: frozen weights {est.frozen_flash_bytes}, initial trainable weights "
            f"{est.trainable_bytes}{persist}, before any code. Use a smaller model, or raise --flash-kb.")


KIND_NAMES = {"input": "input sample", "forward": "activations", "saved for backward": "activations kept for backward",
              "backward": "gradients", "workspace": "kernel workspaces", "output": "outputs"}


def _kinds(live: dict[str, int]) -> str:
    parts = [f"{KIND_NAMES.get(k, k)} {v}" for k, v in sorted(live.items(), key=lambda kv: -kv[1])]
    return "at its peak: " + ", ".join(parts) if parts else "empty"


def memory_report(emitted: EmittedProgram, est: MemoryEstimate, board: Board, ram_bytes: int,
                  flash_bytes: int) -> dict:
    step = emitted.plans["train_step"]
    return {
        "board": board.name,
        "budget": {"ram_bytes": ram_bytes, "flash_bytes": flash_bytes},
        "planned": asdict(est) | {"ram_total_bytes": est.ram_bytes},
        "train_step": {
            "arena_bytes": step.arena_bytes,
            "placement": step.strategy,
            "peak_step": step.peak_step,
            "peak_call": emitted.peak_call,
            "live_bytes_at_peak": step.live_peak_bytes,
            "live_at_peak_by_kind": step.live_at_peak,
        },
        "ram_at_peak": {  # the whole RAM at train_step's peak, as planned
            **{KIND_NAMES.get(k, k): v for k, v in step.live_at_peak.items()},
            "arena slack (placement)": step.arena_bytes - step.live_peak_bytes,
            "trainable weights": est.trainable_bytes,
            "momentum": est.momentum_bytes,
            "harness and runtime (estimate)": est.io_bytes,
            "stack (reserved)": est.stack_bytes,
        },
        "predict": {"arena_bytes": emitted.plans["predict"].arena_bytes},
        "patched_prefix": {  # PatchFrozenPrefix: the frozen start computed tile by tile, per function
            name: {"cut": cut, "cut_shape": list(shape), "tiles": [rows, cols]}
            for name, (cut, shape, rows, cols) in emitted.patched_prefix.items()},
        "persist": None if emitted.persist is None else {
            "flash_area_bytes": emitted.persist.area_bytes,
            "slot_bytes": emitted.persist.slot_bytes,
            "payload_bytes": emitted.persist.payload_bytes,
            "sector_bytes": FLASH_SECTOR_BYTES,
            "fingerprint": f"0x{emitted.persist.fingerprint:08x}",
            "file": "flash_state.bin (emulated boards and host)",
        },
    }
