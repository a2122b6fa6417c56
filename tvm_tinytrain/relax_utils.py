"""Small Relax helpers that TVM 0.27 does not offer directly."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator


def op_name(expr) -> str | None:
    """"relax.conv2d", "relax.call_tir", ... for a call to an op; None for anything else."""
    return getattr(getattr(expr, "op", None), "name", None)


def backward_start(func: relax.Function, bindings, label: str = "label") -> int:
    """Index of the first binding that reads the label: where a training step's forward
    pass ends (len(bindings) for a function without a label, e.g. predict)."""
    label_var = next((p for p in func.params if p.name == label), None)
    return next((i for i, b in enumerate(bindings) if label_var in relax.analysis.free_vars(b.value)),
                len(bindings))


def function_attrs(func: relax.Function) -> dict:
    """A function's attributes but its name, for rebuilding it with `BlockBuilder.function`."""
    return {str(k): v for k, v in func.attrs.items() if str(k) != "global_symbol"} if func.attrs else {}


def readers(bindings) -> dict:
    """Each variable -> the indices of the bindings that read it, in order."""
    found: dict = {}
    for i, b in enumerate(bindings):
        for v in relax.analysis.free_vars(b.value):
            found.setdefault(v, []).append(i)
    return found


def map_functions(mod: tvm.IRModule, names, rewrite) -> tvm.IRModule:
    """A copy of `mod` with each Relax function named in `names` replaced by `rewrite(func)`."""
    mod = tvm.IRModule(dict(mod.functions))
    for gv in list(mod.get_global_vars()):
        if gv.name_hint in names and isinstance(mod[gv], relax.Function):
            mod[gv] = rewrite(mod[gv])
    return mod


@mutator
class _VarSubstituter(PyExprMutator):
    def __init__(self, mapping):
        super().__init__()
        self.mapping = mapping

    def visit_var_(self, op):
        return self.mapping.get(op, op)

    def visit_dataflow_var_(self, op):
        return self.mapping.get(op, op)


def substitute_vars(expr: relax.Expr, mapping: dict[relax.Var, relax.Var]) -> relax.Expr:
    """Replace variables (plain or dataflow) in `expr`, e.g. renamed params or rebound values."""
    return _VarSubstituter(mapping).visit_expr(expr)
