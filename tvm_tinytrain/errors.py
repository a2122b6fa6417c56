"""One exception type for everything a user can get wrong.

The CLI prints a `TinyTrainError` as a single message and exits non-zero; anything else
is a bug in tvm-tinytrain and keeps its traceback.
"""


class TinyTrainError(Exception):
    """A problem with the user's model, config, toolchain, budget or run."""


class UnsupportedOpError(TinyTrainError):
    """The model uses an operator the pipeline cannot train."""


class ConfigError(TinyTrainError):
    """The sparse-update configuration is invalid for this model."""


class ToolchainMissingError(TinyTrainError):
    """A compiler or emulator is not installed (the message names the Debian package)."""


class BudgetError(TinyTrainError):
    """The training program needs more RAM or flash than the target has."""


class BuildError(TinyTrainError):
    """The C compiler or linker failed."""


class RunError(TinyTrainError):
    """The program faulted, timed out or exited non-zero on its target."""


def brief(value, limit: int = 80) -> str:
    """A repr of a value from a user's file that is safe to put in a message: bounded in
    length and in nesting (a hostile file may hold a huge or 10^5-deep value), never
    raising (a 5,000-digit int or a self-referencing list must not hide the real error)."""
    import reprlib

    r = reprlib.Repr()  # Python 3.11: limits are attributes, not constructor arguments
    r.maxlevel, r.maxstring, r.maxother, r.maxlong = 3, limit, limit, 40
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 6
    try:
        text = r.repr(value)
    except Exception:  # noqa: BLE001 - a repr of hostile data may fail in any way
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())  # one line, whatever the value held
    return text if len(text) <= limit else text[:limit - 3] + "..."


# The unsupported ops one error lists; the rest are counted. The listed entries share
# LISTING_CHARS (each keeps at least MAX_PROBLEM_CHARS), so the listing plus the
# supported-op list stays within the CLI's 4,000-character error line whatever the model
# holds, and a lone problem is never cut.
MAX_LISTED_PROBLEMS = 20
MAX_PROBLEM_CHARS = 150
LISTING_CHARS = 3000


def unsupported_ops_error(source: str, problems: list[tuple[str, str]], supported: str,
                          refused: str = "ops cannot be trained") -> UnsupportedOpError:
    """One error for every op of a model the pipeline cannot train, so a user fixes them
    all in one round instead of meeting them one by one.

    `problems` are `(where, what)` pairs in graph order, `where` naming the place in the
    user's terms (a module path, an ONNX node), `what` the op and why; both frontends format
    their refusals here. At most `MAX_LISTED_PROBLEMS` are listed, then "... and K more".
    """
    shown = problems[:MAX_LISTED_PROBLEMS]
    limit = max(MAX_PROBLEM_CHARS, LISTING_CHARS // len(shown))

    def entry(where: str, what: str) -> str:
        text = f"{where}: {what}"
        return text if len(text) <= limit else text[:limit - 3] + "..."

    if len(problems) == 1:
        return UnsupportedOpError(f"{source}: {entry(*problems[0])}. Supported ops: {supported}")
    parts = [f"{source}: {len(problems)} {refused} (in graph order):"]
    parts += [f"{entry(*p)};" for p in shown]
    if len(problems) > len(shown):
        parts.append(f"... and {len(problems) - len(shown)} more;")
    parts.append(f"Supported ops: {supported}")
    return UnsupportedOpError(" ".join(parts))  # one line, as every error of the project
