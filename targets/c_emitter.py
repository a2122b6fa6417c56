"""Emit the C sources of a training program: kernels, driver, parameters, header.

The driver is what TVM 0.27 no longer generates (no AOT executor): for each Relax function
(`train_step`, `predict`) one C function that calls TVM's kernels in order on tensors placed
in one static arena by `tvm_tinytrain.planner`. Everything here is deterministic: the same
program gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
import textwrap
from dataclasses import dataclass, field

import numpy as np

from tvm_tinytrain import __version__
from tvm_tinytrain.c_names import c_comment, c_string
from tvm_tinytrain.errors import TinyTrainError
from tvm_tinytrain.pipeline import TrainingProgram
from tvm_tinytrain.planner import Buffer, Plan, plan

from tvm_tinytrain.passes.split_trained_channels import FROZEN_SUFFIX

from .boards import FLASH_SECTOR_BYTES
from .lower import LoweredProgram, Schedule, Tensor

DL_CODES = {"float": "kDLFloat", "int": "kDLInt", "uint": "kDLUInt", "bool": "kDLBool"}
C_TYPES = {"float32": "float", "int64": "int64_t", "int32": "int32_t", "uint32": "uint32_t", "int16": "int16_t",
           "int8": "int8_t", "uint8": "uint8_t", "bool": "int8_t"}
VALUES_PER_LINE = 8
TT_DTYPES = {"float32": "TT_FLOAT32", "int8": "TT_INT8", "int32": "TT_INT32", "int16": "TT_INT16"}  # tinytrain_model.h


@dataclass
class EmittedProgram:
    files: dict[str, str]           # file name -> contents
    plans: dict[str, Plan]          # schedule name -> arena plan
    arena_bytes: int
    trainable_bytes: int            # RAM: trainable parameters (.data)
    momentum_bytes: int             # RAM: momentum buffers (.bss)
    frozen_bytes: int               # flash: frozen parameters and constants
    peak_call: str = ""             # the train_step kernel call at the arena's peak
    persist: "PersistLayout | None" = None  # emitted with persist=True: the state's flash layout
    patched_prefix: dict = field(default_factory=dict)  # LoweredProgram.patched_prefix


# --persist: the flash layout of the learned state (see runtime/tt_persist.h).
PERSIST_FORMAT = 1
PERSIST_HEADER_BYTES = 24


@dataclass(frozen=True)
class PersistLayout:
    """Where the learned state goes: two slots of `slot_bytes` in a flash area of `area_bytes`."""

    regions: tuple[tuple[str, int], ...]  # (C object, bytes) in payload order
    payload_bytes: int                    # step count + trainable tensors + momentum
    slot_bytes: int                       # header + payload, rounded up to a flash sector
    fingerprint: int                      # 32 bits of the model's hash: other programs' state is refused

    @property
    def area_bytes(self) -> int:
        return 2 * self.slot_bytes



def schedule_buffers(schedule: Schedule) -> list[Buffer]:
    """Lifetimes of the arena tensors and kernel workspaces of one schedule."""
    first: dict[Tensor, int] = {}
    last: dict[Tensor, int] = {}
    for i, call in enumerate(schedule.calls):
        for t in call.args:
            if t.storage == "arena":
                first.setdefault(t, i)
                last[t] = i
    end = len(schedule.calls)
    for t in schedule.outputs:
        if t.storage == "arena":
            last[t] = end
    backward = schedule.loss_index if schedule.loss_index is not None else end + 1
    x = schedule.inputs[0]
    buffers = [Buffer(x.name, x.nbytes, 0, max((i for i, c in enumerate(schedule.calls) if x in c.args), default=0),
                      "input")]
    for t, start in first.items():
        if t in schedule.outputs:
            kind = "output"
        elif start >= backward:
            kind = "backward"
        elif last[t] >= backward:
            kind = "saved for backward"
        else:
            kind = "forward"
        buffers.append(Buffer(t.name, t.nbytes, start, last[t], kind))
    for i, call in enumerate(schedule.calls):
        if call.workspace_bytes:
            buffers.append(Buffer(_ws_name(schedule, i), call.workspace_bytes, i, i, "workspace"))
    return buffers


def _ws_name(schedule: Schedule, i: int) -> str:
    return f"{schedule.name}#workspace{i}"


def plan_arena(schedules: dict[str, Schedule]) -> tuple[dict[str, Plan], int, int]:
    """The arena shared by train_step and predict: (plans, arena bytes, the sample's offset).
    The caller writes the sample into the arena (tt_input): one offset for both functions."""
    step, predict = schedules["train_step"], schedules["predict"]
    plans = {"train_step": plan(schedule_buffers(step))}
    input_offset = plans["train_step"].offsets[step.inputs[0].name]
    plans["predict"] = plan(schedule_buffers(predict), pinned={predict.inputs[0].name: input_offset})
    return plans, max(16, *(p.arena_bytes for p in plans.values())), input_offset


def emit(program: TrainingProgram, lowered: LoweredProgram, *, persist: bool = False) -> EmittedProgram:
    """`persist`: also emit tt_save/tt_restore, keeping the learned state in flash (--persist)."""
    step = lowered.schedules["train_step"]
    plans, arena, input_offset = plan_arena(lowered.schedules)
    params = [t for t in lowered.tensors if t.storage == "param"]
    trainable = [t for t in params if t.param in program.trainable]
    momenta = [t for t in lowered.tensors if t.storage == "momentum"]
    consts = [t for t in lowered.tensors if t.storage == "const"]
    frozen_bytes = sum(t.nbytes for t in params if t not in trainable) + sum(t.nbytes for t in consts)
    layout = persist_layout(program, lowered) if persist else None
    files = {
        "tinytrain_model.h": _header(program, arena, len(_logical(params)), lowered.input_quantization, layout),
        "tinytrain_params.h": _params_header(params, momenta),
        "tinytrain_params.c": _params_source(program, lowered.params, params, momenta),
        "tinytrain_model.c": _driver(program, lowered, plans, arena, params, trainable, momenta, consts,
                                     input_offset, layout),
        "tinytrain_kernels.c": _kernels(program, lowered.kernels_c),
        "kernel_calls.json": _call_table(lowered),
    }
    return EmittedProgram(files, plans, arena, sum(t.nbytes for t in trainable),
                          sum(t.nbytes for t in momenta), frozen_bytes, peak_call(step, plans["train_step"]),
                          layout, lowered.patched_prefix)


def peak_call(step: Schedule, step_plan: Plan) -> str:
    """Where the training step's arena peaks, for reports: "call 165 of 230 (backward): kernel"."""
    peak = step_plan.peak_step
    phase = "backward" if step.loss_index is not None and peak >= step.loss_index else "forward"
    return f"call {peak} of {len(step.calls)} ({phase}): {step.calls[peak].kernel}" if step.calls else ""


def persist_layout(program: TrainingProgram, lowered: LoweredProgram) -> PersistLayout:
    """The state tt_train_step changes (step count, trainable tensors as held in RAM, float
    master copies included, momentum) and a fingerprint of everything that makes the model:
    shapes, dtypes, storage, every parameter's and constant's compiled value, optimizer."""
    state = [t for t in lowered.tensors if (t.storage == "param" and t.trainable) or t.storage == "momentum"]
    regions = (("tt_steps", 4),) + tuple((t.name, t.nbytes) for t in state)
    payload = sum(n for _, n in regions)
    slot = -(-(PERSIST_HEADER_BYTES + -(-payload // 4) * 4) // FLASH_SECTOR_BYTES) * FLASH_SECTOR_BYTES
    h = hashlib.sha256(f"tinytrain-persist {PERSIST_FORMAT} {program.input_shape} {program.num_classes} "
                       f"{program.options}".encode())
    for t in lowered.tensors:
        if t.storage in ("param", "momentum", "const"):
            h.update(f"|{t.name} {t.storage} {t.dtype} {tuple(t.shape)} {int(t.trainable)}|".encode())
            value = t.value if t.storage == "const" else lowered.params.get(t.param) if t.storage == "param" else None
            if value is not None:
                h.update(np.ascontiguousarray(value).tobytes())
    return PersistLayout(regions, payload, slot, int.from_bytes(h.digest()[:4], "little"))


def _persist_api(layout: PersistLayout | None) -> str:
    if layout is None:
        return ""
    return f"""
/* ---- Persistence (compiled with --persist): the learned state survives a reset ----
 * The state (step count, trainable weights and biases as held in RAM, momentum) is kept
 * in two flash slots at the end of the flash budget (board.ld), each with a header (magic,
 * format, sequence number, length, model fingerprint, CRC-32); the newest valid slot wins.
 * The board provides board_flash_open/erase/program (board.h). */
#define TT_PERSIST 1
#define TT_PERSIST_FORMAT {PERSIST_FORMAT}u
#define TT_PERSIST_FINGERPRINT 0x{layout.fingerprint:08x}u /* this model; other programs' state is refused */
#define TT_PERSIST_REGIONS {len(layout.regions)}u
#define TT_PERSIST_PAYLOAD_BYTES {layout.payload_bytes}u /* step count + trainable tensors + momentum */
#define TT_PERSIST_SLOT_BYTES {layout.slot_bytes}u /* 24-byte header + payload, whole {FLASH_SECTOR_BYTES}-byte sectors */
#define TT_PERSIST_AREA_BYTES (2u * TT_PERSIST_SLOT_BYTES)
#define TT_ERR_FLASH (-4)

/* Load the newest valid saved state, if any, over the compiled weights and the momentum
 * (call after tt_init). Returns 1 if a state was restored, 0 if there was none (the flash
 * is empty, corrupted or holds another program's state), TT_ERR_FLASH if the flash failed. */
int tt_restore(void);

/* Save the state now, into the slot NOT holding the newest valid state: erase it, program
 * the payload, then the header, its first word last (the commit). Interrupted anywhere
 * (reset, power cut), the previous state stays valid. Returns 0 or TT_ERR_FLASH. */
int tt_save(void);

/* Successful training steps since tt_init, restored and saved with the state. */
uint32_t tt_step_count(void);

/* Sequence number of the newest valid state in flash (1 for the first save), 0 if none. */
uint32_t tt_state_seq(void);

/* CRC-32 of the state as it is in RAM now (equal to the payload CRC of a save made now). */
uint32_t tt_state_crc(void);
"""


def _persist_source(layout: PersistLayout | None) -> list[str]:
    if layout is None:
        return []
    out = ["/* ---- Persistence (--persist, runtime in tt_persist.c) ---- */",
           "uint32_t tt_step_count(void) {", "  return tt_steps[0];", "}", "",
           "/* The state, in the order of a slot's payload. */",
           "const tt_state_region_t tt_state_regions[TT_PERSIST_REGIONS] = {"]
    out += [f"    {{(void *){name}, {n}u}}," for name, n in layout.regions]
    out += ["};", "",
            "/* The two slots. On an MCU this is flash: board.ld places section .tt_persist (NOLOAD) at",
            " * the end of the flash budget, and the program changes it only through the board's flash",
            " * functions. On the host it is plain memory backed by flash_state.bin. */",
            "#ifdef BOARD_MCU",
            "__attribute__((section(\".tt_persist\")))",
            "#endif",
            "uint8_t tt_persist_area[TT_PERSIST_AREA_BYTES] __attribute__((aligned(8)));", ""]
    return out


def _call_table(lowered: LoweredProgram) -> str:
    """Every kernel call of each function, in the driver's order, with its phase, kind and
    MACs: what `tinytrain profile` puts beside each call's measured instructions."""
    table = {name: [{"index": i, "kernel": c.kernel, "phase": s.phase(i), "kind": c.kind, "macs": c.macs,
                     "outputs": [t.name for t in c.outputs]} for i, c in enumerate(s.calls)]
             for name, s in lowered.schedules.items()}
    return json.dumps(table, indent=1) + "\n"


def _banner(program: TrainingProgram, what: str, details: str = "") -> str:
    """The header comment of every generated file: what it is, what made it, from what."""
    return (f"/* {what}\n *\n * Generated by tvm-tinytrain {__version__} from {c_comment(program.source)}.\n"
            f" * Do not edit: recompile the model instead.\n{details} */\n")


def _input_api(quant: tuple[float, float] | None) -> str:
    if quant is None:
        return """typedef float tt_input_t; /* the model takes float32 samples */

static inline tt_input_t tt_input_from_float(float x) {
  return x;
}"""
    scale, zero = quant
    return f"""typedef int8_t tt_input_t; /* the model takes int8 samples: quantize with tt_input_from_float */

#define TT_INPUT_SCALE {_float_literal(np.float32(scale))} /* {scale:.9g} */
#define TT_INPUT_ZERO {_float_literal(np.float32(zero))}

/* x -> sat(round_half_even(x / scale) + zero), in float32 like the model's own quantization
 * (tt_nearbyintf: nearbyintf's bits, inline where the FPU has no rounding instruction). */
static inline tt_input_t tt_input_from_float(float x) {{
  float q = tt_nearbyintf(x / TT_INPUT_SCALE) + TT_INPUT_ZERO;
  if (!(q >= -128.0f)) {{
    q = -128.0f; /* NaN too */
  }}
  if (q > 127.0f) {{
    q = 127.0f;
  }}
  return (tt_input_t)q;
}}"""


def _header(program: TrainingProgram, arena: int, n_params: int, quant, persist: PersistLayout | None = None) -> str:
    n_in = int(np.prod(program.input_shape))
    shape = "x".join(map(str, program.input_shape))
    return _banner(program, "Public API of the generated training program.") + f"""#ifndef TINYTRAIN_MODEL_H
#define TINYTRAIN_MODEL_H

#include <math.h>
#include <stdint.h>

#include "tt_round.h"

#define TT_INPUT_ELEMS {n_in}u      /* one sample, {"NCHW" if len(program.input_shape) == 4 else "shape"} {shape} */
#define TT_NUM_CLASSES {program.num_classes}u
#define TT_NUM_PARAMS {n_params}u
#define TT_ARENA_BYTES {arena}u

typedef enum {{ TT_FLOAT32 = 0, TT_INT8 = 1, TT_INT32 = 2, TT_INT16 = 3 }} tt_dtype_t; /* int16: a master copy */

typedef struct {{
  const char *name;   /* parameter name in the source model */
  const void *data;   /* trainable: RAM, updated in place by tt_train_step; frozen: flash */
  const void *frozen; /* NULL, or the frozen channels of a weight that trains only some */
  uint32_t size;      /* elements of the whole parameter */
  /* with `frozen`: the parameter is, block after block, trained_block elements of data
   * then frozen_block elements of frozen (the trained channels stay in RAM, the rest in
   * flash). Element i is data[(i / n) * trained_block + i % n] if i % n < trained_block,
   * else frozen[(i / n) * frozen_block + i % n - trained_block], n = trained_block + frozen_block. */
  uint32_t trained_block, frozen_block;
  tt_dtype_t dtype;  /* float32, or int8 weights / int32 biases of a quantized model */
  uint32_t trainable;
}} tt_param_t;

/* Every parameter of the model, in model order. */
extern const tt_param_t tt_params[TT_NUM_PARAMS];

/* Reset the optimizer state (momentum, the step count). Weights start from their compiled values. */
void tt_init(void);

{_input_api(quant)}

/* Where to write the next sample (TT_INPUT_ELEMS values): inside the arena, so the sample
 * costs no RAM of its own. A step or prediction overwrites it. */
tt_input_t *tt_input(void);

/* One SGD step on the sample in tt_input(): forward, loss, backward, in-place update.
{_loss_doc(program)}
 * Returns 0; TT_ERR_LABEL if the label is out of range; TT_ERR_KERNEL if a kernel failed;
 * TT_ERR_NONFINITE if the loss is NaN or Inf (checked before any weight changes). */
#define TT_ERR_LABEL (-1)
#define TT_ERR_KERNEL (-2)
#define TT_ERR_NONFINITE (-3)
int tt_train_step(int32_t label, float *loss);

/* The model's outputs (class scores, or an autoencoder's reconstruction) for the sample in
 * tt_input() with the current weights. Returns 0. */
int tt_predict(float logits[TT_NUM_CLASSES]);
{_persist_api(persist)}
#endif /* TINYTRAIN_MODEL_H */
"""


def _loss_doc(program: TrainingProgram) -> str:
    if _classifies(program):
        return " * Loss: softmax cross-entropy of the outputs against `label` (0 .. TT_NUM_CLASSES - 1)."
    return (" * Loss (--loss mse): the mean squared error between the TT_NUM_CLASSES outputs and the\n"
            " * sample itself (an autoencoder's reconstruction); `label` is ignored.")


def _params_header(params: list[Tensor], momenta: list[Tensor]) -> str:
    lines = ["/* Parameter arrays of the generated training program (tinytrain_params.c). */",
             "#ifndef TINYTRAIN_PARAMS_H", "#define TINYTRAIN_PARAMS_H", "", "#include <stdint.h>", ""]
    for t in params + momenta:
        lines.append(f"extern {_decl(t)};{_source_name(t)}")
    lines += ["", "#endif /* TINYTRAIN_PARAMS_H */", ""]
    return "\n".join(lines)


def _source_name(t: Tensor) -> str:
    """` /* 5.c1.weight */` after a parameter whose C name is not simply its name in the
    model with underscores for dots."""
    plain = t.param.replace(".", "_") if t.param is not None else t.name
    return "" if plain == t.name else f" /* {c_comment(t.param)} */"


def _decl(t: Tensor) -> str:
    const = "const " if t.storage in ("const",) or (t.storage == "param" and not t.trainable) else ""
    return f"{const}{C_TYPES[t.dtype]} {t.name}[{int(np.prod(t.shape))}]"


def _params_source(program: TrainingProgram, values: dict[str, np.ndarray], params: list[Tensor],
                   momenta: list[Tensor]) -> str:
    out = [_banner(program, "Parameters: frozen ones in flash (const), trainable ones and their\n"
                            " * momentum in RAM.").rstrip("\n"),
           '#include "tinytrain_params.h"', ""]
    for t in params:
        where = "RAM, trains" if t.trainable else "flash, frozen"
        out.append(f"/* {c_comment(t.param)}: {'x'.join(map(str, t.shape))} {t.dtype}, {t.nbytes} bytes, {where} */")
        out.append(f"{_decl(t)} = {{")
        out += _array_body(values[t.param])
        out.append("};\n")
    for t in momenta:
        out.append(f"/* {c_comment(t.param)}: momentum of SGD, {t.nbytes} bytes, RAM (zeroed by tt_init) */")
        out.append(f"{_decl(t)};\n")
    return "\n".join(out)


def _array_body(values: np.ndarray) -> list[str]:
    flat = np.asarray(values).ravel()
    if flat.dtype == np.float32:
        if not np.all(np.isfinite(flat)):
            raise TinyTrainError("a parameter holds NaN or Inf: the model cannot be compiled")
        items = [_float_literal(v) for v in flat]
    else:
        items = [str(int(v)) for v in flat]
    return ["  " + ", ".join(items[i:i + VALUES_PER_LINE]) + "," for i in range(0, len(items), VALUES_PER_LINE)]


def _float_literal(v: np.float32) -> str:
    """Exact C literal of a float32: hexadecimal floating point (C99)."""
    mantissa, _, exp = float(v).hex().partition("p")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}p{exp}f"


def _dl_dtype(dtype: str) -> str:
    base = dtype.rstrip("0123456789")
    bits = 8 if dtype == "bool" else int(dtype[len(base):])
    return f"{DL_CODES[base]}, {bits}"


def _driver(program, lowered, plans, arena, params, trainable, momenta, consts, input_offset,
            persist: PersistLayout | None = None) -> str:
    offsets = {name: off for p in plans.values() for name, off in p.offsets.items()}
    o = program.options
    details = (f" *\n * Optimizer: SGD, learning rate {o.lr:g}, momentum {o.momentum:g}; "
               f"{len(trainable)} trainable parameter tensors.\n"
               f" * No dynamic allocation: tensors live in tt_arena at planned offsets, parameters in\n"
               f" * tinytrain_params.c. Kernel workspaces are slices of the arena too (tt_runtime.c).\n *\n"
               + _patches_comment(lowered.patched_prefix) + _layout_comment(plans, arena))
    out = [_banner(program, "Training-step driver: calls TVM's kernels in order over one static arena.",
                   details).rstrip("\n")]
    counter = any(t.storage == "counter" for t in lowered.tensors)  # stochastic rounding reads it
    counts = persist is not None or counter
    why = ", ".join(w for w, on in (("--persist", persist is not None), ("stochastic rounding", counter)) if on)
    out += ['#include <math.h>', '#include <stddef.h>', '#include <stdint.h>', '',
            '#include "tinytrain_model.h"', '#include "tinytrain_params.h"', '#include "tt_runtime.h"',
            *(['#include "tt_persist.h"'] if persist else []),
            '#include "tvm/ffi/c_api.h"', '',
            "static uint8_t tt_arena[TT_ARENA_BYTES] __attribute__((aligned(16)));",
            *(["static int64_t tt_label[1];"] if _classifies(program) else []),
            *([f"static uint32_t tt_steps[1]; /* successful training steps since tt_init ({why}) */"]
              if counts else []), "",
            "#define TT_TENSOR(ptr, shp, nd, code, bits) \\",
            "  {.data = (void *)(ptr), .device = {kDLCPU, 0}, .ndim = (nd), .dtype = {(code), (bits), 1}, \\",
            "   .shape = (int64_t *)(shp), .strides = NULL, .byte_offset = 0}",
            "#define TT_ARG(t) {.type_index = kTVMFFIDLTensorPtr, .zero_padding = 0, .v_ptr = (void *)&(t)}",
            "#define TT_NARGS(a) ((int32_t)(sizeof(a) / sizeof((a)[0])))",
            "", "/* Kernels (tinytrain_kernels.c, TVM's packed calling convention). */"]
    kernels = sorted({c.kernel for s in lowered.schedules.values() for c in s.calls})
    for k in kernels:
        out.append(f"int32_t __tvm_ffi_{k}(void *self, void *args, int32_t num_args, void *result);")
    out += ["", "/* Constants the graph needs beside the parameters. */"]
    for t in consts:
        out.append(f"static const {C_TYPES[t.dtype]} {t.name}[{max(1, int(np.prod(t.shape)))}] = {{")
        out += _array_body(t.value.reshape(-1))
        out.append("};")
    out += ["", "/* Tensor descriptors: where each tensor of the graph lives. */"]
    for t in lowered.tensors:
        if t.storage == "label" and not _classifies(program):
            continue
        shape = ", ".join(map(str, t.shape)) or "1"
        out.append(f"static const int64_t shape_{t.name}[] = {{{shape}}};")
        if t.storage == "arena":
            ptr = f"tt_arena + {offsets[t.name]}"
        elif t.storage == "label":
            ptr = "tt_label"
        elif t.storage == "counter":
            ptr = "tt_steps"
        elif t.storage == "input":
            ptr = f"tt_arena + {input_offset}"
        else:
            ptr = t.name
        const = "const "
        out.append(f"static {const}DLTensor T_{t.name} = TT_TENSOR({ptr}, shape_{t.name}, {len(t.shape)}, "
                   f"{_dl_dtype(t.dtype)});{_source_name(t) if t.storage == 'param' else ''}")
    for name, s in lowered.schedules.items():
        out += ["", f"/* Arguments of each kernel call of {name}. */"]
        for i, call in enumerate(s.calls):
            args = ", ".join(f"TT_ARG(T_{a.name})" for a in call.args)
            out.append(f"static const TVMFFIAny args_{name}_{i}[] = {{{args}}};")
    out += ["", "tt_input_t *tt_input(void) {", f"  return (tt_input_t *)(tt_arena + {input_offset});", "}",
            ""]
    out.append("void tt_init(void) {")
    if counts:
        out.append("  tt_steps[0] = 0;")
    for t in momenta:
        out.append(f"  for (uint32_t i = 0; i < {int(np.prod(t.shape))}u; ++i) {{\n    {t.name}[i] = 0.0f;\n  }}")
    out += ["}", ""]
    out += _function_body(lowered.schedules["train_step"], plans["train_step"], offsets,
                          count_steps=counts, label=_classifies(program))
    out += _function_body(lowered.schedules["predict"], plans["predict"], offsets)
    out += ["const tt_param_t tt_params[TT_NUM_PARAMS] = {"]
    by_param = {t.param: t for t in params}
    for t in _logical(params):
        frozen = by_param.get(t.param + FROZEN_SUFFIX)
        if frozen is None:
            out.append(f'    {{{c_string(t.param)}, {t.name}, NULL, {int(np.prod(t.shape))}u, 0u, 0u, '
                       f'{TT_DTYPES[t.dtype]}, {int(t.trainable)}u}},')
            continue
        axis, _ = lowered.split[t.param]
        trained_block = int(np.prod(t.shape[axis:]))
        frozen_block = int(np.prod(frozen.shape[axis:]))
        size = int(np.prod(t.shape)) + int(np.prod(frozen.shape))
        out.append(f'    {{{c_string(t.param)}, {t.name}, {frozen.name}, {size}u, {trained_block}u, {frozen_block}u, '
                   f'{TT_DTYPES[t.dtype]}, {int(t.trainable)}u}},')
    out += ["};", ""]
    out += _persist_source(persist)
    return "\n".join(out)


def _logical(params: list[Tensor]) -> list[Tensor]:
    """The model's parameters as the user knows them (a split weight's frozen part is not one)."""
    names = {t.param for t in params}
    return [t for t in params if not (t.param.endswith(FROZEN_SUFFIX) and t.param[:-len(FROZEN_SUFFIX)] in names)]


def _patches_comment(patched: dict) -> str:
    """PatchFrozenPrefix, in words: which function computes its frozen start tile by tile."""
    lines = [f" * Patched prefix: {'tt_train_step' if name == 'train_step' else 'tt_predict'} computes its frozen start,"
             f" up to a {'x'.join(map(str, shape))} tensor, in {rows}x{cols} tiles."
             for name, (_, shape, rows, cols) in patched.items()]
    if not lines:
        return ""
    return "\n".join(lines + [" * Each tile runs the prefix's kernels on its region (with the halo its convs need),",
                              " * then write_tile copies it into that tensor: one tile's intermediates live at a time.",
                              " *"]) + "\n"


def _layout_comment(plans, arena) -> str:
    lines = [f" * Memory layout: tt_arena, {arena} bytes, shared by tt_train_step and tt_predict",
             " * (they never run at the same time). Lifetimes are kernel-call indices.",
             " *", " *   function     offset    bytes  lifetime   kind                tensor"]
    for name, p in plans.items():
        for b in sorted(p.buffers, key=lambda b: (p.offsets[b.name], b.start)):
            lines.append(f" *   {name:<11} {p.offsets[b.name]:>7} {b.size:>8}  {b.start:>4}-{b.end:<4}  "
                         f"{b.kind:<19} {b.name}")
    return "\n".join(lines) + "\n"


def _classifies(program: TrainingProgram) -> bool:
    """Whether the step's loss reads a class label (cross-entropy), not the input alone (mse)."""
    return program.options.loss == "cross-entropy"


def _function_body(schedule: Schedule, p: Plan, offsets: dict[str, int], count_steps: bool = False,
                   label: bool = True) -> list[str]:
    if schedule.name == "train_step" and label:
        out = ["int tt_train_step(int32_t label, float *loss) {",
               "  if (label < 0 || label >= (int32_t)TT_NUM_CLASSES) {", "    return TT_ERR_LABEL;", "  }",
               "  tt_label[0] = label;"]
    elif schedule.name == "train_step":
        out = ["int tt_train_step(int32_t label, float *loss) {",
               "  (void)label; /* the mse loss reconstructs the input: no label */"]
    else:
        out = ["int tt_predict(float logits[TT_NUM_CLASSES]) {"]
    for i, call in enumerate(schedule.calls):
        outs = ", ".join(t.name for t in call.outputs)
        ins = ", ".join(t.name for t in call.inputs)
        if i == schedule.loss_index:
            out.append("  /* ---- backward ---- */")
        work = f"{call.macs} MACs" if call.macs else "no MACs"
        out.append(f"  /* {i}: {outs} = {call.kernel}({ins}) [{schedule.phase(i)}, {call.kind}, {work}] */")
        ws = _ws_name(schedule, i)
        if ws in p.offsets:
            out.append(f"  tt_workspace_set(tt_arena + {p.offsets[ws]}, {call.workspace_bytes}u);")
        else:
            out.append("  tt_workspace_set(NULL, 0u);")
        out.append(f"  if (__tvm_ffi_{call.kernel}(NULL, (void *)args_{schedule.name}_{i}, "
                   f"TT_NARGS(args_{schedule.name}_{i}), NULL) != 0) {{\n    return TT_ERR_KERNEL;\n  }}")
        if schedule.loss_index is not None and i == schedule.loss_index - 1:
            out.append(f"  if (!isfinite(*(const float *)(tt_arena + {offsets[schedule.outputs[0].name]}))) {{\n"
                       f"    return TT_ERR_NONFINITE; /* diverged: stop before any weight changes */\n  }}")
    result = schedule.outputs[0]
    if schedule.name == "train_step":
        out.append(f"  *loss = *(const float *)(tt_arena + {offsets[result.name]});")
        if count_steps:
            out.append("  ++tt_steps[0];")
    else:
        out.append(f"  const float *out = (const float *)(tt_arena + {offsets[result.name]});")
        out.append("  for (uint32_t c = 0; c < TT_NUM_CLASSES; ++c) {\n    logits[c] = out[c];\n  }")
    out += ["  return 0;", "}", ""]
    return out


def _kernels(program: TrainingProgram, source: str) -> str:
    called = textwrap.fill(", ".join(sorted(set(re.findall(r"\b(tt_\w+)\(\(", source)))) or "none", 72,
                           initial_indent=" * ", subsequent_indent=" * ")
    return _banner(program, "Kernels: TIR PrimFuncs printed as C by Apache TVM (tvm.tirx.build, target c).\n"
                            " * Loop nests that TVM's tensorize matched call these micro-kernels of\n"
                            " * tt_kernels.c:\n" + called + "\n"
                            " *\n * TVM's packed calling convention passes every kernel the same four\n"
                            " * arguments and reads fields some kernels do not use, hence the two\n"
                            " * warnings silenced for this file only.") + (
        "#pragma GCC diagnostic ignored \"-Wunused-parameter\"\n"
        "#pragma GCC diagnostic ignored \"-Wunused-variable\"\n\n"
        "#include \"tt_math.h\" /* nearbyintf inline, expf and logf the same on every target */\n\n" + source)
