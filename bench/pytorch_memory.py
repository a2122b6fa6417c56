"""Benchmark: PyTorch's memory for one training step of the model and trainable set we compile.

    python bench/pytorch_memory.py --model mcunet-5fps --scheme mcunet-49kb
    python bench/pytorch_memory.py --model mbv2-w0.35 --scheme full [--verify]

prints one JSON object on stdout. The paper ("On-Device Training Under 256KB Memory",
Lin et al. 2022) compares its MCU training memory against PyTorch's (303 MB); this script
measures that PyTorch side for exactly the network and the trainable tensors our compiler
trains on the microcontroller.

The model. The tiny-training zoo's int8 model dequantized to float32, as
`frontend/zoo_float.py` builds it for Relax, rebuilt from torch modules with the same
arithmetic: input `(x - x_zero) * x_scale`, every conv `clamp(conv2d(x, W) + b, lo, hi)`
([lo, hi] the real range of the conv's int8 output: the ReLU / ReLU6 folded into it),
residual `clamp(x_in + y, lo, hi)`, global average pooling, and a new 10-class head (a
1x1 conv with bias, no clamp) as `import_zoo(path, num_classes=10)` gives it. The torch
parameters have the compiler's names (`blocks.8.pointwise1.weight`, `classifier.bias`,
...) and their float32 values come from `import_zoo_float(path, num_classes=10).params`
(written to a temporary .npz); `--verify` checks that the torch forward matches the Relax
fp32 graph on the benchmark input.

The trainable set. Resolved by our own code, `SparseUpdateConfig.scheme(name).resolve(...)`
on the int8 graph of `import_zoo` (the one the compiler trains); `full` trains every
parameter. Everything else gets `requires_grad=False`. Where the scheme updates only a
fraction of a weight's channels (`ts.ratio` < 1), torch trains the whole tensor: PyTorch
has no sparse sub-tensor update, so its numbers are, if anything, slightly high there.

Two measurements, each in a fresh child process that imports only torch, numpy and
`tvm_tinytrain.frontend.zoo_format` (the safe pickle loader; it does not import tvm, which
the parent needs to resolve the trainable set and which would inflate the RSS):

  * `pytorch_peak_bytes`: `ru_maxrss` of the process after building the model and running 3
    SGD steps (batch 1, fp32, a random int8-valued 1x3x128x128 input, cross-entropy with a
    random label, lr 0.01, momentum 0, over the trainable tensors only, one thread). This is
    what a device running PyTorch would need: the paper's comparison. The child is forked
    by a shell, not by this process, so that ru_maxrss does not inherit our own peak (see
    `run_child`); `pytorch_peak_vmhwm_bytes` (VmHWM) cross-checks it.
    `pytorch_baseline_rss_bytes` is the same for a process that builds the model and does
    not train, so `pytorch_step_rss_delta_bytes` is what training adds.
  * `pytorch_tensor_peak_bytes`: the peak of live tensor memory during a 4th step (forward,
    loss, backward, optimizer step) under `torch.profiler` with `profile_memory=True`: the
    running sum of the allocator's allocation / free events, in time order
    (`pytorch_step_alloc_peak_bytes`, tensors created during the step), plus the tensors
    that exist before it (all parameters, `pytorch_param_bytes`, the input and the label).
    Gradients are set to None before the step, so they count as allocated by it.
    `memory_profile` cross-checks it with torch's memory profiler (categories at the peak),
    and `check` lists what the step must hold at least (activations autograd saves for the
    backward pass, gradients) against the sum of all conv outputs.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tvm_tinytrain.errors import TinyTrainError

REPO = Path(__file__).resolve().parents[1]
MODELS = ("mcunet-5fps", "mbv2-w0.35")
NUM_CLASSES = 10
STEPS = 3
LR = 0.01
SEED = 0


# --------------------------------------------------------------------------------------
# The float32 model in torch (imported by the child; no tvm here)
# --------------------------------------------------------------------------------------

def real_range(zero: int, scale: float) -> tuple[float, float]:
    """The real values an int8 tensor with this zero point and scale can hold
    (`zoo_float.real_range`, repeated here because zoo_float imports tvm)."""
    return (-128 - zero) * float(scale), (127 - zero) * float(scale)


class ClampedConv(nn.Conv2d):
    """conv2d + bias, then a clamp to the real range of the int8 output (None: no clamp)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                 out_range: tuple[float, float] | None = None):
        super().__init__(cin, cout, k, stride=stride, padding=(k - 1) // 2, groups=groups, bias=True)
        self.out_range = out_range

    @classmethod
    def from_zoo(cls, conv) -> "ClampedConv":
        """The float counterpart of a `ZooConv` (weights are loaded separately)."""
        return cls(conv.in_channel, conv.out_channel, conv.kernel_size, conv.stride, conv.groups,
                   real_range(conv.y_zero, conv.y_scale))

    def forward(self, x):
        y = super().forward(x)
        return y if self.out_range is None else y.clamp(*self.out_range)


class Block(nn.Module):
    """[pointwise1] -> [depthwise] -> [pointwise2] [+ input, clamped to the add's range]."""

    def __init__(self, block):
        super().__init__()
        self.conv_names = []
        for name in ("pointwise1", "depthwise", "pointwise2"):
            conv = getattr(block, name)
            if conv is not None:
                setattr(self, name, ClampedConv.from_zoo(conv))
                self.conv_names.append(name)
        r = block.residual
        self.residual_range = None if r is None else real_range(r.y_zero, r.y_scale)

    def forward(self, x):
        y = x
        for name in self.conv_names:
            y = getattr(self, name)(y)
        return y if self.residual_range is None else (x + y).clamp(*self.residual_range)


class ZooNet(nn.Module):
    """`import_zoo_float(model, num_classes)` as torch modules, parameters named alike."""

    def __init__(self, zoo, num_classes: int):
        super().__init__()
        first = zoo.first_conv
        self.x_zero, self.x_scale = float(first.x_zero), float(first.x_scale)
        self.first_conv = ClampedConv.from_zoo(first)
        self.blocks = nn.ModuleDict({str(b.index): Block(b) for b in zoo.blocks})
        self.feature_mix = None if zoo.feature_mix is None else ClampedConv.from_zoo(zoo.feature_mix)
        self.classifier = ClampedConv(zoo.classifier.in_channel, num_classes, 1)

    def forward(self, x):
        y = self.first_conv((x - self.x_zero) * self.x_scale)
        for block in self.blocks.values():
            y = block(y)
        if self.feature_mix is not None:
            y = self.feature_mix(y)
        y = self.classifier(y.mean(dim=(2, 3), keepdim=True))
        return y.reshape(1, -1)


# --------------------------------------------------------------------------------------
# Child process: the measured one
# --------------------------------------------------------------------------------------

def build_model(zoo_path: str, params_path: str) -> ZooNet:
    """The torch model with the float32 parameters the parent wrote (names must match)."""
    from tvm_tinytrain.frontend.zoo_format import load_zoo_model

    model = ZooNet(load_zoo_model(zoo_path), NUM_CLASSES)
    with np.load(params_path) as arrays:
        state = {name: torch.from_numpy(arrays[name]) for name in arrays.files}
    model.load_state_dict(state, strict=True)  # copies into the modules' own tensors
    return model


def peak_rss_bytes() -> dict:
    """Peak resident set size of this process so far: ru_maxrss (KiB on Linux) and, as a
    cross-check, VmHWM of /proc/self/status (the high-water mark of this address space)."""
    status = Path("/proc/self/status").read_text()
    hwm = int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1))
    return {"ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "vmhwm": hwm * 1024}


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def forward_loss(model: nn.Module, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), label)


def step_alloc_peak(prof) -> tuple[int, int]:
    """(peak, final) running sum of the allocator's CPU allocation (+) / free (-) events."""
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak, live


def memory_profile_peak(prof) -> dict:
    """torch's memory profiler (private API): live tensor bytes by category at the peak,
    pre-existing tensors the step touches included."""
    try:
        from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX, MemoryProfileTimeline

        _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
        totals = [sum(s) for s in sizes]
        at_peak = sizes[int(np.argmax(totals))]
        categories = {("unknown" if c is None else c.name.lower()): at_peak[i + 1]
                      for c, i in _CATEGORY_TO_INDEX.items()}
        return {"peak_bytes": max(totals), "by_category_at_peak": categories}
    except Exception as err:  # private API: report, do not fail the benchmark
        return {"error": f"{type(err).__name__}: {err}"}


def plausibility(model: ZooNet, x: torch.Tensor, label: torch.Tensor, trainable,
                 step_alloc_peak: int) -> dict:
    """Bounds for the step's allocation peak, from the model itself.

    When the forward pass ends, every activation autograd saved for the backward pass is
    live (distinct storages, parameters excluded; each clamp saves its input and each conv
    whose weight trains saves its input, so this is ~2x the conv outputs of the trained
    part): a lower bound. The backward pass frees them as it goes while the gradients
    appear, with a few activation-sized gradient temporaries at a time: saved + gradients +
    4 x the largest conv output is a rough upper bound. `all_conv_outputs_bytes` (every
    conv's clamped fp32 output, summed) is given for scale.
    """
    param_ptrs = {p.data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        if t.data_ptr() not in param_ptrs:
            saved[t.data_ptr()] = max(saved.get(t.data_ptr(), 0), t.untyped_storage().nbytes())
        return t

    conv_out = []
    hooks = [m.register_forward_hook(lambda m, i, o: conv_out.append(tensor_bytes(o)))
             for m in model.modules() if isinstance(m, ClampedConv)]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward_loss(model, x, label)
    for h in hooks:
        h.remove()
    del loss
    lower = sum(saved.values())
    upper = lower + sum(tensor_bytes(p) for p in trainable) + 4 * max(conv_out)
    return {"saved_for_backward_bytes": lower,
            "gradient_bytes": sum(tensor_bytes(p) for p in trainable),
            "all_conv_outputs_bytes": sum(conv_out),
            "largest_conv_output_bytes": max(conv_out),
            "step_alloc_peak_bounds": [lower, upper],
            "step_alloc_peak_within_bounds": lower <= step_alloc_peak <= upper}


def child(cfg: dict) -> dict:
    """Build (and, for mode "train", train and profile) the model; return the numbers."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    model = build_model(cfg["zoo_path"], cfg["params_path"])
    x = torch.from_numpy(np.load(cfg["input_path"]))
    label = torch.tensor([cfg["label"]], dtype=torch.long)
    out = {"tvm_imported": "tvm" in sys.modules,
           "imports": sorted(m for m in ("torch", "numpy", "tvm", "tvm_tinytrain.frontend.zoo_format")
                             if m in sys.modules)}
    if cfg["mode"] == "baseline":
        return {**out, "rss": peak_rss_bytes()}

    names = set(cfg["trainable"])
    params = dict(model.named_parameters())
    missing = names - set(params)
    if missing:
        raise SystemExit(f"trainable names not in the torch model: {sorted(missing)}")
    for name, p in params.items():
        p.requires_grad_(name in names)
    trainable = [p for name, p in params.items() if name in names]
    with torch.no_grad():
        logits = model(x)[0].tolist()  # before training, for --verify
    opt = torch.optim.SGD(trainable, lr=LR, momentum=0.0)

    losses = []
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = forward_loss(model, x, label)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        del loss
    rss = peak_rss_bytes()  # read before the profiler allocates anything

    opt.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        loss = forward_loss(model, x, label)
        loss.backward()
        opt.step()
    del loss
    alloc_peak, alloc_end = step_alloc_peak(prof)
    param_bytes = sum(tensor_bytes(p) for p in params.values())
    preexisting = param_bytes + tensor_bytes(x) + tensor_bytes(label)
    return {**out, "rss": rss, "losses": losses, "logits": logits,
            "param_bytes": param_bytes, "preexisting_tensor_bytes": preexisting,
            "step_alloc_peak_bytes": alloc_peak, "step_alloc_end_bytes": alloc_end,
            "tensor_peak_bytes": preexisting + alloc_peak,
            "trainable_tensors": len(trainable),
            "trainable_elements": sum(p.numel() for p in trainable),
            "total_elements": sum(p.numel() for p in params.values()),
            "memory_profile": memory_profile_peak(prof),
            "check": plausibility(model, x, label, trainable, alloc_peak)}


# --------------------------------------------------------------------------------------
# Parent process: resolves the trainable set with our compiler's code (imports tvm)
# --------------------------------------------------------------------------------------

def resolve_trainable(zoo_path: Path, scheme: str) -> tuple[list[str], dict[str, float]]:
    """The compiler's trainable parameter names (graph order) and channel ratios."""
    from tvm_tinytrain.config import SparseUpdateConfig  # imports tvm (via layers)
    from tvm_tinytrain.frontend.zoo_frontend import import_zoo
    from tvm_tinytrain.layers import find_layers

    main = import_zoo(zoo_path, num_classes=NUM_CLASSES).mod["main"]
    names = [p.name for p in main.params[1:]]
    if scheme == "full":
        return names, {n: 1.0 for n in names}
    ts = SparseUpdateConfig.scheme(scheme).resolve(find_layers(main), names)
    return list(ts.names), dict(ts.ratio)


def float_model(zoo_path: Path):
    """`import_zoo_float(path, num_classes=10)`: the fp32 Relax model and its parameters."""
    from tvm_tinytrain.frontend.zoo_float import import_zoo_float

    return import_zoo_float(zoo_path, num_classes=NUM_CLASSES)


def relax_logits(fm, x: np.ndarray) -> np.ndarray:
    """The fp32 Relax graph's logits on `x` (Relax VM, LLVM), for --verify."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.compile(fm.mod, target="llvm"), tvm.cpu())
    args = [tvm.runtime.tensor(np.ascontiguousarray(v)) for v in (x, *fm.params.values())]
    return vm["main"](*args).numpy()[0]


def run_child(cfg: dict, tmp: Path) -> dict:
    """Run this file as `--child` in a fresh interpreter; its result comes back as a file.

    Linux folds the RSS high-water mark of the address space an `exec` replaces into the
    new program's ru_maxrss, so a child exec'd straight from this process (which holds
    torch and tvm, ~400 MB) would report at least our RSS. The child is therefore started
    by a shell that forks it (`"$0" "$@"; exit $?` is not tail-exec'd): what it inherits
    is the shell's few MB, and ru_maxrss agrees with VmHWM (checked in `main`).
    """
    cfg = {**cfg, "result_path": str(tmp / f"{cfg['mode']}.json")}
    cmd = ["/bin/sh", "-c", '"$0" "$@"; exit $?', sys.executable, str(Path(__file__).resolve()),
           "--child"]
    proc = subprocess.run(cmd, input=json.dumps(cfg), capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"child ({cfg['mode']}) failed with code {proc.returncode}:\n{proc.stderr}")
    return json.loads(Path(cfg["result_path"]).read_text())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=MODELS, default="mcunet-5fps")
    ap.add_argument("--scheme", default="mcunet-49kb",
                    help="a paper scheme (tvm_tinytrain.config.PAPER_SCHEMES) or 'full'")
    ap.add_argument("--zoo-dir", type=Path, default=REPO.parent / "shared/models/tiny-training")
    ap.add_argument("--verify", action="store_true",
                    help="also compare the torch forward with the Relax fp32 graph (compiles it)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        cfg = json.loads(sys.stdin.read())
        Path(cfg["result_path"]).write_text(json.dumps(child(cfg)))
        return

    start = time.perf_counter()
    zoo_path = args.zoo_dir / f"{args.model}.pkl"
    if args.scheme.split("-")[0] not in ("full", args.model.split("-")[0]):
        print(f"warning: {args.scheme} is a scheme for another model; its conv indices are "
              f"applied to {args.model} as they are", file=sys.stderr)
    try:
        trainable, ratio = resolve_trainable(zoo_path, args.scheme)
    except TinyTrainError as err:
        raise SystemExit(f"error: {err}") from None
    fm = float_model(zoo_path)
    rng = np.random.default_rng(SEED)
    x = rng.integers(-128, 128, (1, *fm.input_shape[1:])).astype(np.float32)
    label = int(rng.integers(NUM_CLASSES))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "params.npz", **fm.params)
        np.save(tmp / "input.npy", x)
        cfg = {"zoo_path": str(zoo_path), "params_path": str(tmp / "params.npz"),
               "input_path": str(tmp / "input.npy"), "label": label, "trainable": trainable}
        base = run_child({**cfg, "mode": "baseline"}, tmp)
        train = run_child({**cfg, "mode": "train"}, tmp)

    shapes = {n: v.shape for n, v in fm.params.items()}
    sparse_elements = sum(int(np.prod(shapes[n])) * ratio[n] for n in trainable)
    result = {
        "model": args.model,
        "scheme": args.scheme,
        "pytorch_peak_bytes": train["rss"]["ru_maxrss"],
        "pytorch_peak_vmhwm_bytes": train["rss"]["vmhwm"],
        "pytorch_baseline_rss_bytes": base["rss"]["ru_maxrss"],
        "pytorch_step_rss_delta_bytes": train["rss"]["ru_maxrss"] - base["rss"]["ru_maxrss"],
        "pytorch_tensor_peak_bytes": train["tensor_peak_bytes"],
        "pytorch_step_alloc_peak_bytes": train["step_alloc_peak_bytes"],
        "pytorch_param_bytes": train["param_bytes"],
        "pytorch_preexisting_tensor_bytes": train["preexisting_tensor_bytes"],
        "trainable_tensors": train["trainable_tensors"],
        "trainable_elements": train["trainable_elements"],
        "compiler_trainable_elements": round(sparse_elements),
        "partially_updated_tensors": {n: r for n, r in ratio.items() if r < 1.0},
        "total_elements": train["total_elements"],
        "losses": train["losses"],
        "memory_profile": train["memory_profile"],
        "check": train["check"],
        "measured_process_imports": train["imports"],
        "torch_version": torch.__version__,
        "method": (
            "pytorch_peak_bytes is ru_maxrss of a fresh process (imports: torch, numpy, the "
            "zoo pickle loader; no tvm) after building the fp32 model and running 3 SGD steps "
            "(batch 1, 1x3x128x128, lr 0.01, momentum 0, 1 thread) over the compiler's "
            "trainable tensors, whole tensors even where the compiler updates a fraction of "
            "the channels; pytorch_tensor_peak_bytes is the peak running sum of torch "
            "profiler allocation/free events over a 4th step (forward, loss, backward, "
            "optimizer step; gradients start as None) plus the tensors existing before it "
            "(all parameters, input, label)."),
    }
    if args.verify:
        want = relax_logits(fm, x)
        got = np.asarray(train["logits"], np.float32)
        result["verify_max_abs_logit_diff"] = float(np.max(np.abs(got - want)))
        result["verify_max_abs_logit"] = float(np.max(np.abs(want)))
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    for run in (base, train):
        if run["tvm_imported"]:
            raise SystemExit("tvm was imported in a measured process: the RSS would be inflated")
        if run["rss"]["ru_maxrss"] > run["rss"]["vmhwm"] + (1 << 20):
            raise SystemExit(f"ru_maxrss {run['rss']} exceeds the process's own VmHWM: "
                             "it was inherited from the launching process")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
