"""tvm-tinytrain: on-device training programs for microcontrollers, compiled with Apache TVM Relax."""

from .errors import TinyTrainError

__all__ = ["TinyTrainError"]
__version__ = "0.1.0"
