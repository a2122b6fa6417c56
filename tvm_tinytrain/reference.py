"""Run a `TrainingProgram` on the Relax VM (LLVM, host CPU): the reference for the C code."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .errors import TinyTrainError
from tvm_tinytrain.passes.sgd_kernels import STEP_COUNTER
from .pipeline import TrainingProgram


class RelaxVMTrainer:
    """Holds the parameters as VM tensors; `step` updates them in place like the device does."""

    def __init__(self, program: TrainingProgram):
        self.program = program
        exe = tvm.compile(program.mod, target="llvm")
        self.vm = relax.VirtualMachine(exe, tvm.cpu())
        self.params = [tvm.runtime.tensor(np.ascontiguousarray(v)) for v in program.params.values()]
        self.momenta = [tvm.runtime.tensor(np.zeros(shape, np.float32))
                        for shape in program.momentum_shapes.values()]
        # stochastic rounding: the count of successful steps, as the device's tt_steps
        self.steps = 0
        self.counted = program.mod["train_step"].params[-1].name == STEP_COUNTER

    def _input(self, x: np.ndarray):
        """The sample as the program takes it: float32, or int8 quantized like the device
        does when the memory passes made the input int8 (`targets.lower.memory_passes`)."""
        from .targets.lower import input_quantization

        x = np.asarray(x, np.float32).reshape(self.program.input_shape)
        quant = input_quantization(self.program.mod)
        if quant is not None:
            q = np.rint(x / np.float32(quant[0])) + np.float32(quant[1])
            x = np.clip(q, -128, 127).astype(np.int8)
        return tvm.runtime.tensor(x)

    def step(self, x: np.ndarray, label: int) -> float:
        x = self._input(x)
        y = tvm.runtime.tensor(np.array([label], np.int64))
        counter = [tvm.runtime.tensor(np.array([self.steps], np.uint32))] if self.counted else []
        out = self.vm["train_step"](x, y, *self.params, *self.momenta, *counter)
        loss = float(out[0].numpy())
        if not np.isfinite(loss):  # the device stops before updating; the VM has updated already
            raise TinyTrainError(f"the loss became {loss}: training diverged (lower the learning rate)")
        self.steps += 1
        return loss

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = self._input(x)
        return self.vm["main"](x, *self.params).numpy()[0]

    def param(self, name: str) -> np.ndarray:
        return self.params[list(self.program.params).index(name)].numpy()
