"""Names and text from the model, made safe for the generated C.

A model's names are not C identifiers: a bare `torch.nn.Sequential` names its parameters
`5.c1.weight`, torch's ONNX exporter `onnx::Conv_95` or `/features/0/Conv`, and any file may
hold a C keyword, a dash or a non-ASCII letter. Everything a name becomes in C goes through
this module:

- `c_identifier`: the one sanitizer. Deterministic, and its result is always a valid C
  identifier that is no keyword and no name the generated program or its headers use;
  already valid names (`features_0_weight`, `lv3`) come back unchanged.
- `CNamer`: unique identifiers within one program (`a.b` and `a_b` become `a_b` and
  `a_b_1`), in the order names are asked for, none equal to the driver's own names.
- `c_string`, `c_comment`: a source name kept for the user, in `tt_params[]` (a string
  literal holding its exact UTF-8 bytes) and in comments.

`targets/lower.py` names the driver's tensors with a `CNamer` and gives the Relax functions
the same names before `LegalizeOps`, so the parameters of TVM's kernels (named after the
Relax variables) are these identifiers too; `FuseSGDUpdate` names each update kernel
`sgd_` + `c_identifier(parameter)`. It lives here, not in `targets/`, because a pass uses it.
"""

from __future__ import annotations

import re

#: Prefix of a name that cannot start a C identifier or is reserved (`5.c1.weight` ->
#: `t_5_c1_weight`, `int` -> `t_int`, `_x` -> `t__x`).
PREFIX = "t_"

# C11 and C23 keywords, and GNU's (gcc 12 compiles gnu17; newer gcc default to gnu23).
C_KEYWORDS = frozenset("""
    auto break case char const continue default do double else enum extern float for goto if
    inline int long register restrict return short signed sizeof static struct switch typedef
    union unsigned void volatile while
    alignas alignof bool constexpr false nullptr static_assert thread_local true typeof
    typeof_unqual asm
""".split())

# What the generated files and the headers they include define: <stdint.h>, <stddef.h>,
# <math.h> (the kernels and tt_math.h call it), DLPack and TVM's FFI (the driver's
# descriptors).
_MATH = """acos asin atan atan2 cos sin tan acosh asinh atanh cosh sinh tanh exp exp2 expm1 frexp
    ldexp log log10 log1p log2 logb modf scalbn scalbln cbrt fabs hypot pow sqrt erf erfc lgamma
    tgamma ceil floor nearbyint rint lrint llrint round lround llround trunc fmod remainder remquo
    copysign nan nextafter nexttoward fdim fmax fmin fma ilogb""".split()
C_LIBRARY = frozenset([
    *_MATH, *(f + "f" for f in _MATH), *(f + "l" for f in _MATH),
    "isfinite", "isinf", "isnan", "isnormal", "signbit", "fpclassify", "INFINITY", "NAN",
    "HUGE_VAL", "HUGE_VALF", "errno", "NULL", "size_t", "ptrdiff_t", "offsetof",
    *(f"{u}int{n}_t" for u in ("", "u") for n in (8, 16, 32, 64)), "intptr_t", "uintptr_t",
    "intmax_t", "uintmax_t", "DLTensor", "DLDevice", "DLDataType", "kDLCPU", "kDLFloat", "kDLInt",
    "kDLUInt", "kDLBool", "TVMFFIAny", "kTVMFFIDLTensorPtr", "TVM_DLL", "main",
])
# The parameters and locals of tt_train_step and tt_predict: valid in a kernel (the Relax
# function's `x` and `label` keep their names there), taken in the driver (`CNamer`).
DRIVER_NAMES = frozenset(["x", "label", "loss", "logits", "out"])
# Prefixes of the names the driver and runtime define around each tensor: its descriptor
# T_<name>, shape_<name>, the call arguments args_<function>_<i>, and the tt_ API.
RESERVED_PREFIXES = ("tt_", "TT_", "T_", "shape_", "args_")

_NOT_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]")


def c_identifier(name: str) -> str:
    """A valid C identifier for `name`: every character outside [A-Za-z0-9_] becomes `_`,
    and `PREFIX` goes in front of a result that is empty, starts with a digit or `_` (C
    reserves `_X` and `__x`), or is a keyword or a library name, or starts with one of the
    driver's prefixes. Names that need none of this come back unchanged, which makes it
    idempotent: c_identifier(c_identifier(n)) == c_identifier(n)."""
    ident = _NOT_IDENTIFIER.sub("_", name)
    if (not ident or ident[0].isdigit() or ident[0] == "_" or ident.startswith(RESERVED_PREFIXES)
            or ident in C_KEYWORDS or ident in C_LIBRARY):
        ident = PREFIX + ident
    return ident


class CNamer:
    """Unique C identifiers for one program, each `c_identifier(hint)` or, when that is
    taken (`a.b` and `a_b`) or is one of the driver's own names, with `_1`, `_2`, ...
    after it. Deterministic for the same names asked for in the same order.

    `namer[name]` is the identifier of a named thing (a parameter), the same every time;
    `namer.fresh(hint)` a new one (a tensor of the schedule)."""

    def __init__(self):
        self.used: set[str] = set(DRIVER_NAMES)
        self.names: dict[str, str] = {}

    def fresh(self, hint: str) -> str:
        base = c_identifier(hint)
        candidate, i = base, 1
        while candidate in self.used:
            candidate, i = f"{base}_{i}", i + 1
        self.used.add(candidate)
        return candidate

    def __getitem__(self, name: str) -> str:
        if name not in self.names:
            self.names[name] = self.fresh(name)
        return self.names[name]


def c_string(text: str) -> str:
    """A C string literal holding `text`'s UTF-8 bytes exactly: printable ASCII as it is,
    quotes, backslashes and `?` (trigraphs) escaped, every other byte in octal."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\?':
            out.append("\\" + ch)
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")  # three digits: a following digit cannot join it
    return '"' + "".join(out) + '"'


def c_comment(text: str) -> str:
    """`text` made safe inside a one-line `/* ... */` comment: no `*/` that would end it, no
    `/*` (gcc's -Wcomment), no line breaks or control characters."""
    text = re.sub(r"[\x00-\x1f\x7f]", " ", text)
    return re.sub(r"/(?=\*)", "/ ", re.sub(r"\*(?=/)", "* ", text))
