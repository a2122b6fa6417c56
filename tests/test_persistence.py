"""The learned state survives a reset or a power cut (`tinytrain compile --persist`).

A program compiled with persist=True keeps its state (step count, trainable tensors as held
in RAM, momentum) in two flash slots (see targets/runtime/tt_persist.h).  On the emulated
boards the flash is backed by the file flash_state.bin through semihosting, synchronously,
and the instruction-count plugin can end QEMU after exactly N instructions (a power cut).

The power-cut test (Cortex-M7 and RV32, slow): one run trains, saves state A (seq 1),
trains one more step and saves state B (seq 2).  That run is cut at >= 400 instruction
counts (TINYTRAIN_POWER_CUTS) over the whole second save, at EVERY instruction of its last part, which
holds every store of the slot header (the test finds each one: the instruction after which
flash_state.bin changes).  After each cut the program is rebooted on the file it left: the
restored state must be exactly A or exactly B (its CRC over every state byte, the dump of
all parameters bit for bit, and the losses of two more training steps, which depend on the
momentum, bit for bit against uncut reference runs), A before the header's commit word is
stored and B from then on.  A reboot is deterministic in the flash image it boots on, so
each distinct image left by the cuts is rebooted once (most cuts inside one word's store
leave the same file).  About 1 minute on Cortex-M7 and 1.5 on RV32 (their commit sequences
take 700 and 1,300 instructions, all cut), cut runs 2 at a time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from elftools.elf.elffile import ELFFile

from conftest import INPUT_SHAPE, OPTIONS, SPARSE, make_small_net, samples
from tvm_tinytrain.errors import RunError, TinyTrainError
from tvm_tinytrain.frontend.torch_frontend import import_torch
from tvm_tinytrain.pipeline import build_training_program
from tvm_tinytrain.targets.boards import build, get_board, run
from tvm_tinytrain.targets.c_emitter import emit
from tvm_tinytrain.targets.harness import DUMP, SAVE, TRAIN, Record, parse_output, write_input
from tvm_tinytrain.targets.lower import lower
from tvm_tinytrain.targets.project import write_project

N_IN = int(np.prod(INPUT_SHAPE))
XS, YS = samples(8, seed=7)
FLASH_FILE = "flash_state.bin"
HEADER = struct.Struct("<6I")  # magic, format, seq, payload bytes, fingerprint, crc
MAGIC = 0x54535454
# At least this many cut points per save. 400 in the suite (every instruction of the header's
# commit sequence, and about 100 spread over the erase and the payload);
# TINYTRAIN_POWER_CUTS=2000 spreads many more (a longer sweep: about 2 minutes more per board).
MIN_CUTS = int(os.environ.get("TINYTRAIN_POWER_CUTS", "400"))
MIN_SPREAD_CUTS = 100          # cut points spread evenly over the erase and the payload
DENSE_STEP = 100               # the every-instruction window at the end grows by this much


def _t(i: int) -> Record:
    return Record(TRAIN, XS[i], int(YS[i]))


WRITER = [_t(0), Record(SAVE), _t(1), Record(SAVE)]   # saves A (1 step), then B (2 steps)
PROBE = [Record(DUMP), _t(5), _t(6)]                  # after a restore: dump, two more steps
REF_A = [_t(0), *PROBE]                               # the same without any flash
REF_B = [_t(0), _t(1), *PROBE]


@pytest.fixture(scope="module")
def persist_emitted(small_program):
    return emit(small_program, lower(small_program), persist=True)


def _project(program, emitted, board_name: str, root: Path):
    board = get_board(board_name)
    project = root / "proj"
    write_project(program, project, board, emitted=emitted, persist=True)
    return board, project, build(board, project)


def _run(board, built, cwd: Path, records, flash: bytes | None = None, **kwargs):
    """Run in a fresh directory cwd with its own input.bin and flash file (None: no file)."""
    cwd.mkdir(parents=True, exist_ok=True)
    write_input(cwd / "input.bin", records, N_IN)
    (cwd / FLASH_FILE).unlink(missing_ok=True)
    if flash is not None:
        (cwd / FLASH_FILE).write_bytes(flash)
    return run(board, built, cwd=cwd, timeout_s=120, **kwargs)


def _probe(board, built, cwd: Path, flash: bytes | None):
    """Reboot on `flash`: (restored (seq, steps, crc) or None, parameter dump, losses)."""
    out = parse_output(_run(board, built, cwd, PROBE, flash).lines, PROBE)
    return out.restored, out.params[0], out.losses


def _reference(board, built, cwd: Path, records):
    out = parse_output(_run(board, built, cwd, records).lines, records)
    assert out.restored is None
    return out.params[0], out.losses[-2:]  # the two steps after the dump


def _bits_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]).view(np.uint8), np.asarray(b[k]).view(np.uint8))
                                        for k in a)


def _slots(flash: bytes, slot_bytes: int):
    return [HEADER.unpack_from(flash, s * slot_bytes) for s in range(2)]


# ----------------------------------------------------------------- no toolchain for QEMU needed

def test_persistence_is_off_by_default(small_program, persist_emitted, tmp_path):
    board = get_board("cortex-m7")
    write_project(small_program, tmp_path / "off", board, emitted=emit(small_program, lower(small_program)))
    off = tmp_path / "off"
    assert not (off / "tt_persist.c").exists() and not (off / "tt_persist.h").exists()
    assert "TT_PERSIST" not in (off / "tinytrain_model.h").read_text()
    assert "tt_steps" not in (off / "tinytrain_model.c").read_text()
    ld = (off / "board.ld").read_text()
    assert "PERSIST (r)" not in ld and ".tt_persist (NOLOAD)" not in ld and "This program does not persist." in ld
    assert '"persist": null' in (off / "memory_report.json").read_text()

    write_project(small_program, tmp_path / "on", board, emitted=persist_emitted, persist=True)
    on = tmp_path / "on"
    layout = persist_emitted.persist
    assert layout.slot_bytes % 4096 == 0 and layout.area_bytes == 2 * layout.slot_bytes
    ld = (on / "board.ld").read_text()
    origin = board.flash_origin + 1024 * 1024 - layout.area_bytes
    assert f"PERSIST (r) : ORIGIN = 0x{origin:08x}, LENGTH = {layout.area_bytes}" in ld
    assert f"LENGTH = {origin - board.flash_origin}" in ld  # FLASH: code and data before it
    header = (on / "tinytrain_model.h").read_text()
    assert "int tt_save(void);" in header and "int tt_restore(void);" in header
    assert f"#define TT_PERSIST_FINGERPRINT 0x{layout.fingerprint:08x}u" in header
    # the state: step count, every trainable tensor in RAM, every momentum buffer
    names = [n for n, _ in layout.regions]
    assert names[0] == "tt_steps" and any(n.startswith("momentum_") for n in names)
    assert layout.payload_bytes == 4 + persist_emitted.trainable_bytes + persist_emitted.momentum_bytes
    with pytest.raises(TinyTrainError, match="persist"):
        write_project(small_program, tmp_path / "x", board, emitted=persist_emitted)


def test_host_save_restore_crc_and_fingerprint(small_program, persist_emitted, tmp_path):
    """On the host build (stdio-backed flash): the slot format, and that a corrupted slot and
    another model's state are refused."""
    board, project, built = _project(small_program, persist_emitted, "host", tmp_path)
    layout = persist_emitted.persist
    rebuilt = subprocess.run(["make", "-B"], cwd=project, capture_output=True, text=True, check=True,
                             env={k: v for k, v in os.environ.items() if k not in ("CFLAGS", "MAKEFLAGS")})
    assert "-Wall -Wextra" in rebuilt.stdout and "warning" not in rebuilt.stderr.lower(), rebuilt.stderr
    w = parse_output(_run(board, built, tmp_path / "w", WRITER).lines, WRITER)
    assert w.restored is None
    (seq_a, steps_a, crc_a), (seq_b, steps_b, crc_b) = w.saves
    assert (seq_a, steps_a, seq_b, steps_b) == (1, 1, 2, 2)
    flash = (tmp_path / "w" / FLASH_FILE).read_bytes()
    assert len(flash) == layout.area_bytes

    # The format of tt_persist.h: A in slot 0, B in slot 1, CRC-32 as zlib's.
    for slot, (seq, crc_state) in enumerate([(1, crc_a), (2, crc_b)]):
        base = slot * layout.slot_bytes
        magic, fmt, s, n, fp, crc = HEADER.unpack_from(flash, base)
        payload = flash[base + 24: base + 24 + n]
        assert (magic, fmt, s, n, fp) == (MAGIC, 1, seq, layout.payload_bytes, layout.fingerprint)
        assert crc == zlib.crc32(payload, zlib.crc32(flash[base: base + 20]))
        assert zlib.crc32(payload) == crc_state  # the payload is the state in RAM at the save
        assert set(flash[base + 24 + n: base + layout.slot_bytes]) == {0xFF}  # the rest stays erased

    restored, params_b, _ = _probe(board, built, tmp_path / "r0", flash)
    assert restored == (2, 2, crc_b)
    # A flipped payload byte in the newest slot: its CRC fails, the older slot wins.
    bad = bytearray(flash)
    bad[layout.slot_bytes + 24 + 100] ^= 0x01
    restored, params, _ = _probe(board, built, tmp_path / "r1", bytes(bad))
    assert restored == (1, 1, crc_a)
    assert not _bits_equal(params, params_b)
    # A flipped header byte (the sequence number) too.
    bad = bytearray(flash)
    bad[layout.slot_bytes + 8] ^= 0x04
    assert _probe(board, built, tmp_path / "r2", bytes(bad))[0] == (1, 1, crc_a)
    # Both slots corrupted: nothing is restored, the compiled weights stay.
    bad[24 + 7] ^= 0x80
    restored, params, _ = _probe(board, built, tmp_path / "r3", bytes(bad))
    assert restored is None
    fresh = parse_output(_run(board, built, tmp_path / "r4", PROBE).lines, PROBE)
    assert _bits_equal(params, fresh.params[0])
    # The next save after a refused slot goes to that slot's partner, with the next seq.
    out = parse_output(_run(board, built, tmp_path / "r1", [Record(SAVE)], (tmp_path / "r1" / FLASH_FILE)
                            .read_bytes()).lines, [Record(SAVE)])
    assert out.restored == (1, 1, crc_a) and out.saves == [(2, 1, crc_a)]

    # Another model (same layout, other weights): its state is refused (fingerprint).
    other = build_training_program(import_torch(make_small_net(seed=3), torch.zeros(INPUT_SHAPE)), SPARSE, OPTIONS)
    other_emitted = emit(other, lower(other), persist=True)
    assert other_emitted.persist.payload_bytes == layout.payload_bytes
    assert other_emitted.persist.fingerprint != layout.fingerprint
    board, _, other_built = _project(other, other_emitted, "host", tmp_path / "other")
    assert _probe(board, other_built, tmp_path / "r5", flash)[0] is None
    # ... and the same model compiled again accepts it (deterministic: the same bytes).
    again = emit(small_program, lower(small_program), persist=True)
    assert again.persist == layout and again.files == persist_emitted.files


def test_save_needs_a_persist_program(small_program, tmp_path):
    board = get_board("host")
    write_project(small_program, tmp_path / "p", board)
    built = build(board, tmp_path / "p")
    with pytest.raises(RunError, match="compile the program with --persist"):
        _run(board, built, tmp_path / "r", [Record(SAVE)])


# ----------------------------------------------------------------- power cuts under QEMU

@pytest.mark.slow
@pytest.mark.parametrize("board_name", ["cortex-m7", "riscv32"])
def test_power_cut_during_save_restores_old_or_new_state(small_program, persist_emitted, board_name,
                                                         tmp_path):
    t0 = time.monotonic()
    board, _, built = _project(small_program, persist_emitted, board_name, tmp_path)
    layout = persist_emitted.persist
    # The flash area is reserved at the end of the 1 MB flash budget, counted in flash_bytes.
    assert built.persist_flash_bytes == layout.area_bytes == 8192
    with open(built.elf, "rb") as f:
        symbols = {s.name: s["st_value"] for s in ELFFile(f).get_section_by_name(".symtab").iter_symbols()}
    assert symbols["tt_persist_area"] == board.flash_origin + 1024 * 1024 - layout.area_bytes

    # Uncut runs: the writer, and references that train the same steps with no flash at all.
    writer = _run(board, built, tmp_path / "writer", WRITER)
    out = parse_output(writer.lines, WRITER)
    assert out.restored is None and [s[:2] for s in out.saves] == [(1, 1), (2, 2)]
    state_a, state_b = out.saves[0], out.saves[1]
    full_flash = (tmp_path / "writer" / FLASH_FILE).read_bytes()
    # regions: the restore at start, a step, save A, a step, save B
    assert len(writer.region_instructions) == 5
    start, length = writer.region_starts[-1], writer.region_instructions[-1]
    end = start + length
    params_a, losses_a = _reference(board, built, tmp_path / "ref-a", REF_A)
    params_b, losses_b = _reference(board, built, tmp_path / "ref-b", REF_B)
    assert losses_a != losses_b

    restored: dict[str, str] = {}  # flash image hash -> "A" | "B"

    def classify(flash: bytes, cwd: Path) -> str:
        key = hashlib.sha256(flash).hexdigest()
        if key not in restored:
            got, params, losses = _probe(board, built, cwd, flash)
            shutil.rmtree(cwd, ignore_errors=True)
            if got == (1, 1, state_a[2]) and _bits_equal(params, params_a) and losses == losses_a:
                restored[key] = "A"
            elif got == (2, 2, state_b[2]) and _bits_equal(params, params_b) and losses == losses_b:
                restored[key] = "B"
            else:
                restored[key] = f"neither A nor B: restored {got}, losses {losses}"
        return restored[key]

    assert classify(full_flash, tmp_path / "probe-full") == "B"

    def cut(n: int) -> bytes:
        cwd = tmp_path / "cuts" / str(n)
        result = _run(board, built, cwd, WRITER, stop_after=n)
        assert result.cut_at == n and result.total_instructions == n
        flash = (cwd / FLASH_FILE).read_bytes()
        shutil.rmtree(cwd, ignore_errors=True)
        return flash

    files: dict[int, bytes] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        # Every instruction at the end of the save, back until the window holds the stores
        # of all 6 header words and of the last payload word (the file changes 7 times).
        lo = end + 1
        while True:
            new = list(range(max(start, lo - DENSE_STEP), lo))
            files.update(zip(new, pool.map(cut, new)))
            lo = new[0]
            dense = sorted(n for n in files if n >= lo)
            changes = [n for a, n in zip(dense, dense[1:]) if files[n] != files[a]]
            if len(changes) >= 7 or lo == start:
                break
        n_spread = max(MIN_SPREAD_CUTS, MIN_CUTS - len(files))
        spread = sorted(set(np.linspace(start, lo - 1, n_spread).astype(int).tolist()) - files.keys())
        files.update(zip(spread, pool.map(cut, spread)))
        points = sorted(files)
        kinds = dict(zip(points, pool.map(lambda n: classify(files[n], tmp_path / "probes" / str(n)), points)))

    assert len(points) >= MIN_CUTS
    bad = {n: k for n, k in kinds.items() if k not in ("A", "B")}
    assert not bad, f"cuts that restored neither state A nor state B: {dict(list(bad.items())[:5])}"
    first_b = next(n for n in points if kinds[n] == "B")
    assert all(kinds[n] == "A" for n in points if n < first_b), "a cut after the commit restored A"
    assert all(kinds[n] == "B" for n in points if n >= first_b), "a cut before the commit restored B"
    assert kinds[start] == "A" and kinds[end] == "B"

    # The header stores, found exactly: the last 6 changes of the file are the header words
    # of slot 1, format..CRC then the magic; the magic's store is the commit, where B starts.
    slot = layout.slot_bytes
    stores = changes[-6:]
    offsets = []
    for n in stores:
        before, after = files[n - 1], files[n]
        diff = [i for i in range(len(after)) if after[i] != before[i]]
        assert diff and diff[-1] - diff[0] < 4, f"cut {n}: more than one word changed"
        offsets.append((diff[0] - slot) // 4 * 4)
    assert offsets == [4, 8, 12, 16, 20, 0]
    assert first_b == stores[-1]
    # Before the commit the new slot is complete but for its magic; after it, A's slot is intact.
    assert _slots(files[first_b - 1], slot)[1][0] == 0xFFFFFFFF
    assert files[first_b - 1][slot + 4:] == full_flash[slot + 4:]
    assert files[first_b] == full_flash
    assert files[end][:slot] == files[start][:slot]  # the save never touched A's slot

    elapsed = time.monotonic() - t0
    print(f"\n{board_name}: {len(points)} cut points over a {length}-instruction save "
          f"(every instruction of the last {end + 1 - lo}; header stores at "
          f"{[n - start for n in stores]} from the save's start), {len(restored)} distinct flash images "
          f"restored, {elapsed:.0f} s")
