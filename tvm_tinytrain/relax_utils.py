"""Small Relax helpers that TVM 0.27 does not offer directly."""

from __future__ import annotations

from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator


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
