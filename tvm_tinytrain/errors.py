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
