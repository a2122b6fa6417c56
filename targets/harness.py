"""The host side of the harness protocol (see runtime/main.c): write input.bin, parse output."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tvm_tinytrain.errors import RunError, TinyTrainError

TRAIN, PREDICT, DUMP, SAVE = ord("T"), ord("P"), ord("D"), ord("S")
_INT_TYPES = {"i8": np.int8, "i16": np.int16, "i32": np.int32}


@dataclass(frozen=True)
class Record:
    op: int                     # TRAIN | PREDICT | DUMP | SAVE (--persist programs)
    x: np.ndarray | None = None
    label: int = 0


def write_input(path: Path, records: list[Record], input_elems: int) -> None:
    zeros = np.zeros(input_elems, np.float32)
    with open(path, "wb") as f:
        f.write(b"TTIN" + struct.pack("<III", 1, len(records), input_elems))
        for r in records:
            x = zeros if r.x is None else np.asarray(r.x, np.float32).reshape(-1)
            if x.size != input_elems:
                raise TinyTrainError(f"a sample has {x.size} elements but the model takes {input_elems}")
            f.write(struct.pack("<Ii", r.op, int(r.label)) + x.astype("<f4").tobytes())


@dataclass
class HarnessOutput:
    losses: list[float] = field(default_factory=list)
    predictions: list[int] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)
    params: list[dict[str, np.ndarray]] = field(default_factory=list)  # one dict per DUMP record
    stack_bytes: int = 0
    workspace_bytes: int = 0
    # --persist programs: the state restored at start, None if none ("restored none") or if
    # the program does not persist; and one entry per SAVE record; each (seq, steps, crc)
    restored: tuple[int, int, int] | None = None
    saves: list[tuple[int, int, int]] = field(default_factory=list)


def _floats(words: list[str]) -> np.ndarray:
    return np.array([int(w, 16) for w in words], dtype=np.uint32).view(np.float32)


def parse_output(lines: list[str], records: list[Record]) -> HarnessOutput:
    out = HarnessOutput()
    done = False
    for line in lines:
        words = line.split()
        if not words:
            continue
        tag = words[0]
        if tag == "loss":
            out.losses.append(float(_floats(words[2:3])[0]))
        elif tag == "pred":
            out.predictions.append(int(words[2]))
            out.logits.append(_floats(words[3:]))
        elif tag == "stack":
            out.stack_bytes = int(words[1])
        elif tag == "workspace":
            out.workspace_bytes = int(words[1])
        elif tag == "restored" and len(words) == 4:
            out.restored = (int(words[1]), int(words[2]), int(words[3], 16))
        elif tag == "saved":
            out.saves.append((int(words[1]), int(words[2]), int(words[3], 16)))
        elif tag == "done":
            done = True
        elif tag == "error":
            raise RunError("the training program reported: " + " ".join(words[1:]))
    if not done:
        raise RunError("the training program stopped before the end of its input:\n" + "\n".join(lines[-5:]))
    out.params = _split_dumps(lines, sum(r.op == DUMP for r in records))
    return out


def _split_dumps(lines: list[str], n_dumps: int) -> list[dict[str, np.ndarray]]:
    """Each DUMP prints every trainable parameter once, from offset 0: a new dump starts
    when the first parameter's offset-0 line comes again."""
    dumps: list[dict[str, list[np.ndarray]]] = []
    first_name = None
    for line in lines:
        words = line.split()
        if not words or words[0] != "param":
            continue
        name, dtype, offset = words[1], words[2], int(words[3])
        if first_name is None:
            first_name = name
        if name == first_name and offset == 0:
            dumps.append({})
        bits = np.array([int(w, 16) for w in words[4:]], dtype=np.uint32)
        values = bits.view(np.float32) if dtype == "f32" else bits.view(np.int32).astype(_INT_TYPES[dtype])
        dumps[-1].setdefault(name, []).append(values)
    if len(dumps) != n_dumps:
        raise RunError(f"expected {n_dumps} parameter dumps, got {len(dumps)}")
    return [{k: np.concatenate(v) for k, v in d.items()} for d in dumps]
