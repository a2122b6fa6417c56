"""The `tinytrain` command: compile, run, profile, demo, search, targets.

Every user error ends as one line `tinytrain: error: ...` and exit status 1; a traceback
means a bug in tvm-tinytrain.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import PAPER_SCHEMES, SparseUpdateConfig
from .errors import ConfigError, TinyTrainError
from .errors import brief as errors_brief
from .pipeline import INT8_UPDATES, MemoryOptions, TrainOptions
from .search import GENERATIONS, POPULATION

DEFAULT_TARGET = "cortex-m7"
CALIBRATION_SAMPLES = 200  # --quantize: as the int8 demo calibrates (demo.CALIBRATION_SAMPLES)
MAX_FACTORY_ARGS = 32


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TinyTrainError as err:
        print(f"tinytrain: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tinytrain: interrupted", file=sys.stderr)
        return 130


MAX_ERROR_CHARS = 4000


def _one_line(err: Exception) -> str:
    """A last defence: an error's text on one line of at most MAX_ERROR_CHARS characters
    (messages bound the values they quote themselves, with `errors.brief`)."""
    try:
        text = " ".join(str(err).split())
    except Exception:  # noqa: BLE001 - never lose the error line
        text = type(err).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


def _parser() -> argparse.ArgumentParser:
    from .targets.boards import BOARDS

    p = argparse.ArgumentParser(prog="tinytrain", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    c = sub.add_parser("compile", help="model + sparse-update config + target -> a C project folder")
    c.add_argument("model", help="an ONNX file (model.onnx), a PyTorch factory (file.py:function), "
                                 "or a tiny-training int8 model (model.pkl)")
    c.add_argument("--num-classes", type=int,
                   help="replace the classifier by a new head of this many classes (the final nn.Linear or "
                        "ONNX Gemm of a float model, the classifier of a tiny-training model)")
    c.add_argument("--input-shape", help="NCHW input shape for PyTorch models, e.g. 1,1,8,8 (not needed when "
                                        "the factory returns (model, example_input))")
    c.add_argument("--factory-args", nargs="+", default=[], metavar="NAME=VALUE",
                   help="keyword arguments for a PyTorch factory, e.g. num_classes=10 width=0.5 (Python "
                        "literals; anything else is passed as a string)")
    c.add_argument("--weights", help="a state_dict saved with torch.save (loaded with weights_only=True)")
    c.add_argument("--quantize", choices=["int8"],
                   help="quantize a float model after import (per-channel int8 weights, activations "
                        "calibrated on --calibration) and train it int8 with QAS")
    c.add_argument("--calibration", metavar="DATA.npz",
                   help="samples for --quantize: the first --calibration-samples of x_train")
    c.add_argument("--calibration-samples", type=int, default=CALIBRATION_SAMPLES,
                   help=f"how many (default {CALIBRATION_SAMPLES})")
    _add_config_args(c)
    _add_build_args(c)
    c.add_argument("--persist", action="store_true",
                   help="keep the learned state in flash across resets: tt_save()/tt_restore(), two "
                        "sector-aligned slots at the end of the flash budget (off: no code, no flash)")
    c.add_argument("-o", "--output", required=True, help="project folder to write (replaced atomically)")
    c.set_defaults(func=_cmd_compile)

    r = sub.add_parser("run", help="build a compiled project and train it on a data stream")
    r.add_argument("project", help="a folder written by `tinytrain compile`")
    r.add_argument("--data", required=True,
                   help=".npz with x_train, y_train, x_test, y_test (float32 samples, int labels; an mse model "
                        "ignores the labels)")
    r.add_argument("--epochs", type=int, default=1)
    r.add_argument("--timeout", type=float, default=1800, help="seconds before the run is stopped")
    r.add_argument("--json", action="store_true", help="print the result as one JSON object (last line)")
    r.set_defaults(func=_cmd_run)

    f = sub.add_parser("profile", help="instructions of every kernel call of one training step, on the board")
    f.add_argument("project", help="a folder written by `tinytrain compile` for an emulated board")
    f.add_argument("--data", help=".npz whose first x_train / y_train sample to step on (default: a fixed "
                                  "random sample)")
    f.add_argument("--top", type=int, default=15, help="how many of the dearest calls to list")
    f.add_argument("--plot", help="write a bar chart of the calls to this PNG (needs matplotlib)")
    f.add_argument("--json", action="store_true", help="print the whole profile as one JSON object")
    f.add_argument("--timeout", type=float, default=600, help="seconds before the run is stopped")
    f.set_defaults(func=_cmd_profile)

    d = sub.add_parser("demo", help="learn new digits on an emulated MCU (real data, real emulator)")
    d.add_argument("--target", default=DEFAULT_TARGET, choices=sorted(BOARDS))
    d.add_argument("--epochs", type=int, default=None,
                   help="passes over the training stream (default 3 for int8, 2 for float)")
    d.add_argument("--float", action="store_true", help="train the float32 model instead of int8 + QAS")
    d.add_argument("--out", default=None, help="project folder (default out/demo-TARGET)")
    d.add_argument("--json", action="store_true", help="print the result as one JSON object (last line)")
    d.set_defaults(func=_cmd_demo)

    s = sub.add_parser("search", help="which weights to train: contribution analysis + evolutionary search under "
                                      "a RAM budget -> a sparse-update config")
    s.add_argument("model", help="as for compile")
    s.add_argument("--data", required=True,
                   help=".npz with x_train, y_train (x_test, y_test unused): the analysis fine-tunes on x_train "
                        "less a validation quarter, and scores on that quarter")
    s.add_argument("--num-classes", type=int, help="as for compile")
    s.add_argument("--input-shape", help="as for compile")
    s.add_argument("--factory-args", nargs="+", default=[], metavar="NAME=VALUE", help="as for compile")
    s.add_argument("--weights", help="as for compile")
    s.add_argument("--quantize", choices=["int8"], help="as for compile")
    s.add_argument("--calibration", metavar="DATA.npz", help="as for compile")
    s.add_argument("--calibration-samples", type=int, default=CALIBRATION_SAMPLES, help="as for compile")
    g = s.add_argument_group("training (as compile)")
    g.add_argument("--lr", type=float, help=f"default {DEFAULT_STEP} x (1 - momentum)")
    g.add_argument("--momentum", type=float, default=TrainOptions.momentum)
    g.add_argument("--no-qas", action="store_true")
    _add_int8_update_args(g)
    _add_build_args(s)
    g = s.add_argument_group("search")
    g.add_argument("--steps", type=int, help="fine-tuning steps of each analysis run (default: one pass over "
                                             "the training part)")
    g.add_argument("--seeds", type=int, default=1, help="analysis runs per point, averaged (sample orders)")
    g.add_argument("--bias-points", type=int, default=8,
                   help="points of the bias curve besides 0 and all layers (denser near the output)")
    g.add_argument("--last-layers", type=int,
                   help="analyse the weights of the last N layers only (default: every layer whose weight can "
                        "fit the budget; each costs 4 runs)")
    g.add_argument("--population", type=int, default=POPULATION)
    g.add_argument("--generations", type=int, default=GENERATIONS)
    g.add_argument("--seed", type=int, default=0, help="the search's random generator")
    g.add_argument("--workers", type=int, help="processes for the analysis and the pricing (default: every core)")
    g.add_argument("--ray", metavar="ADDRESS",
                   help="run the analysis on a Ray cluster ('auto', 'ray://host:10001', or 'local' for a new "
                        "local instance); needs pip install 'tvm-tinytrain[ray]'")
    g.add_argument("--work-dir", help="caches of runs, prices and the search state: a re-run resumes "
                                      "(default: OUTPUT's name + '.work' beside it)")
    g.add_argument("--project", help="where to compile the chosen scheme (default: WORK_DIR/project)")
    g.add_argument("--plot", help="also draw gain against planned RAM of every candidate to this PNG")
    s.add_argument("-o", "--output", required=True, help="the config to write (YAML, for compile --config); its "
                                                       "report goes beside it as .json")
    s.set_defaults(func=_cmd_search)

    t = sub.add_parser("targets", help="list the targets")
    t.set_defaults(func=_cmd_targets)
    return p


# The default SGD step, from bench/qas.py (MCUNet-5FPS fine-tuned on digits, lr chosen on a
# validation split): plain SGD with QAS was best at 0.01 (0.003 within a point), SGD with
# momentum 0.9 at 0.001, for int8 + QAS and for float32 alike: the same step once divided by
# (1 - momentum). The former default, 0.05, made int8 + QAS training diverge.
DEFAULT_STEP = 0.01


def default_lr(momentum: float) -> float:
    """The learning rate `compile` uses unless --lr is given: DEFAULT_STEP * (1 - momentum)."""
    return DEFAULT_STEP * (1 - momentum) if 0 <= momentum < 1 else DEFAULT_STEP  # TrainOptions refuses the momentum


def _add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sparse update (which parameters train; the classifier does unless --no-classifier)")
    g.add_argument("--config", help="YAML or JSON file with the keys below")
    g.add_argument("--scheme", choices=sorted(PAPER_SCHEMES),
                   help="one of the paper's MCUNet-5FPS schemes (flags below add to it)")
    g.add_argument("--param", action="append", default=[], metavar="NAME", help="train this parameter")
    g.add_argument("--n-bias-update", type=int,
                   help="train the biases of the last N layers (convs and linear layers before the classifier)")
    g.add_argument("--weight-idx", type=int, nargs="+", help="train the weights of these layers (0 = first)")
    g.add_argument("--ratio", type=float, nargs="+", help="per --weight-idx: fraction of input channels")
    g.add_argument("--no-classifier", action="store_true",
                   help="leave the last layer frozen (train_classifier: false), e.g. an autoencoder's wide output")
    g.add_argument("--lr", type=float, help=f"SGD learning rate (default {DEFAULT_STEP} x (1 - momentum): the best "
                   "step bench/qas.py measured for int8 + QAS and float32 fine-tuning; 0.05 diverges on int8 + QAS)")
    g.add_argument("--momentum", type=float, default=TrainOptions.momentum, help="SGD momentum")
    g.add_argument("--loss", choices=["cross-entropy", "mse"], default=TrainOptions.loss,
                   help="cross-entropy of the outputs against the label (classifiers, the default), or mse: the "
                        "mean squared error between the outputs and the input (autoencoders; labels unused)")
    g.add_argument("--no-qas", action="store_true",
                   help="int8 models: train without Quantization-Aware Scaling (on by default)")
    _add_int8_update_args(g)


def _add_int8_update_args(g) -> None:
    g.add_argument("--int8-update", choices=INT8_UPDATES, default=TrainOptions.int8_update,
                   help="int8 models: how an update smaller than one integer step is kept: nearest (rounded "
                        "away), stochastic (rounded up or down at random, unbiased), int16 (int16 master copies "
                        "of the trained weights, 2x their RAM), float32 (float32 masters, 4x; as tiny-training). "
                        "README, 'int8 updates', has the measurements (default: %(default)s)")
    g.add_argument("--float-master", dest="int8_update", action="store_const", const="float32",
                   help="the same as --int8-update float32")


def _add_build_args(p: argparse.ArgumentParser) -> None:
    from .targets.boards import BOARDS

    g = p.add_argument_group("target and budget")
    g.add_argument("--target", default=DEFAULT_TARGET, choices=sorted(BOARDS))
    g.add_argument("--ram-kb", type=int, default=256, help="RAM budget (KiB)")
    g.add_argument("--flash-kb", type=int, default=1024, help="flash budget (KiB)")
    g.add_argument("--stack-kb", type=int, default=8, help="stack reserved inside the RAM budget (KiB)")
    g.add_argument("--no-memory-pass", action="append", default=[], metavar="PASS",
                   choices=[f.name for f in dataclasses.fields(MemoryOptions)],
                   help="turn one memory pass off to measure what it saves (repeatable): "
                        + ", ".join(f.name for f in dataclasses.fields(MemoryOptions)))
    g.add_argument("--patch-prefix", action="store_true",
                   help="compute the frozen early stage tile by tile (PatchFrozenPrefix): less RAM, more "
                        "instructions (MCUNet-5FPS, 49 KB scheme: 150 -> 128 KB for 7 %% more instructions)")


def config_from_args(args) -> SparseUpdateConfig:
    data = {}
    if getattr(args, "scheme", None):
        data = vars(SparseUpdateConfig.scheme(args.scheme)).copy()
    if args.config:
        data |= SparseUpdateConfig.read_file(args.config)  # only the keys the file sets
    if args.param:
        data["params"] = tuple(data.get("params", ())) + tuple(args.param)
    if args.n_bias_update is not None:
        data["n_bias_update"] = args.n_bias_update
    if args.weight_idx is not None:
        data["manual_weight_idx"] = args.weight_idx
        data["weight_update_ratio"] = args.ratio or ()
    elif args.ratio:
        raise ConfigError("--ratio needs --weight-idx (one ratio per conv index)")
    if args.no_classifier:
        data["train_classifier"] = False
    return SparseUpdateConfig.from_dict(data)


def load_model(spec: str, input_shape: str | None, weights: str | None, num_classes: int | None = None,
               factory_args: list[str] | tuple[str, ...] = ()):
    """An ImportedModel from `model.onnx`, `model.pkl` (tiny-training int8) or
    `file.py:factory` (+ optional state_dict and factory arguments); `num_classes` gives it
    a new head."""
    path, _, factory = spec.partition(":")
    if factory_args and not (path.endswith(".py") and factory):
        raise TinyTrainError("--factory-args is for a PyTorch factory (file.py:function)")
    if path.endswith(".onnx") and not factory:
        from .frontend.onnx_frontend import import_onnx
        return _new_head(import_onnx(path), num_classes)
    if path.endswith(".pkl") and not factory:
        from .frontend.zoo_frontend import import_zoo
        from .frontend.zoo_format import MAX_CHANNELS
        if num_classes is not None and not 2 <= num_classes <= MAX_CHANNELS:
            raise TinyTrainError(f"--num-classes must be in [2, {MAX_CHANNELS}], got {num_classes}")
        return import_zoo(path, num_classes=num_classes)
    if not path.endswith(".py") or not factory:
        raise TinyTrainError(f"model '{spec}': give an ONNX file (model.onnx), a tiny-training int8 "
                             f"model (model.pkl) or a PyTorch factory (file.py:function returning an nn.Module)")
    kwargs = parse_factory_args(factory_args)
    import torch

    from .frontend.torch_frontend import import_torch
    if not Path(path).is_file():
        raise TinyTrainError(f"no such file: {path}")
    spec_ = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    if not callable(getattr(module, factory, None)):
        raise TinyTrainError(f"{path} has no function '{factory}'")
    try:
        made = getattr(module, factory)(**kwargs)
    except TypeError as err:
        raise TinyTrainError(f"{spec}({', '.join(f'{k}={errors_brief(v)}' for k, v in kwargs.items())}) failed: "
                             f"{errors_brief(str(err), 300)}") from None
    model, example = made if isinstance(made, tuple) and len(made) == 2 else (made, None)
    if not isinstance(model, torch.nn.Module) or not (example is None or isinstance(example, torch.Tensor)):
        raise TinyTrainError(f"{spec} returned {_kind(made)}: a factory returns an nn.Module, or "
                             "(nn.Module, example input tensor)")
    shape = _input_shape(input_shape, example)
    if weights:
        from .frontend.torch_frontend import load_weights
        load_weights(model, weights)
    return _new_head(import_torch(model, torch.zeros(shape), source=spec), num_classes)


def parse_factory_args(items) -> dict:
    """NAME=VALUE strings as keyword arguments: VALUE a Python literal (10, 0.5, "a", (3, 3),
    True, None), else the string itself; never evaluated as code."""
    if len(items) > MAX_FACTORY_ARGS:
        raise TinyTrainError(f"--factory-args takes at most {MAX_FACTORY_ARGS} arguments, got {len(items)}")
    kwargs = {}
    for item in items:
        name, eq, text = item.partition("=")
        if not eq or not name.isidentifier() or len(item) > 200:
            raise TinyTrainError(f"--factory-args: {errors_brief(item)} is not NAME=VALUE")
        try:
            kwargs[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            kwargs[name] = text
    return kwargs


def _input_shape(text: str | None, example) -> tuple[int, ...]:
    """--input-shape if given (it must agree with the factory's example input), else the example's."""
    shape = None
    if text:
        try:
            shape = tuple(int(d) for d in text.split(","))
        except ValueError:
            raise TinyTrainError(f"--input-shape must be integers separated by commas, got "
                                 f"{errors_brief(text)}") from None
    if example is not None:
        if shape is not None and shape != tuple(example.shape):
            raise TinyTrainError(f"--input-shape {shape} differs from the factory's example input "
                                 f"{tuple(example.shape)}")
        return tuple(example.shape)
    if shape is None:
        raise TinyTrainError("a PyTorch model needs --input-shape (e.g. --input-shape 1,3,32,32), or a factory "
                             "returning (model, example_input)")
    return shape


def _kind(value) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)} ({', '.join(type(v).__name__ for v in value[:4])})"
    return f"a {type(value).__name__}"


def _new_head(model, num_classes: int | None):
    if num_classes is None:
        return model
    from .frontend.new_head import with_new_head
    return with_new_head(model, num_classes)


def quantize_from_args(model, args):
    """The model quantized as --quantize / --calibration ask, or as it is."""
    if not args.quantize:
        if args.calibration:
            raise TinyTrainError("--calibration goes with --quantize int8")
        return model
    if model.is_quantized:
        raise TinyTrainError(f"{model.source} is int8 already: --quantize is for float models")
    if not args.calibration:
        raise TinyTrainError("--quantize int8 needs --calibration DATA.npz (samples to measure activation ranges)")
    if not 1 <= args.calibration_samples <= 100_000:
        raise TinyTrainError(f"--calibration-samples must be in [1, 100000], got {args.calibration_samples}")
    from .data import load_npz
    from .quantize import post_training_quantize
    x = load_npz(args.calibration)["x_train"][:args.calibration_samples]
    if math.prod(x.shape[1:]) != math.prod(model.input_shape):
        raise TinyTrainError(f"{args.calibration}: x_train holds samples of shape {x.shape[1:]}, the model "
                             f"takes {tuple(model.input_shape)}")
    # a classifier's logits get room to grow confident (and its head's weights with them); an
    # autoencoder's outputs keep the calibrated range, that of the samples it reconstructs
    return post_training_quantize(model, x, logit_range=0.0 if getattr(args, "loss", None) == "mse" else 8.0)


def compile_to_project(model, config: SparseUpdateConfig, options: TrainOptions, target: str, out: Path,
                       *, ram_kb: int = 256, flash_kb: int = 1024, stack_kb: int = 8,
                       memory: MemoryOptions = MemoryOptions(), persist: bool = False):
    from .pipeline import build_training_program
    from .targets.boards import check_toolchain, get_board
    from .targets.project import write_project

    board = get_board(target)
    check_toolchain(board)
    program = dataclasses.replace(build_training_program(model, config, options), memory=memory)
    emitted, estimate = write_project(program, out, board, ram_bytes=ram_kb * 1024,
                                      flash_bytes=flash_kb * 1024, stack_bytes=stack_kb * 1024,
                                      persist=persist)
    return board, program, emitted, estimate


def _cmd_compile(args) -> int:
    model = quantize_from_args(load_model(args.model, args.input_shape, args.weights, args.num_classes,
                                          args.factory_args), args)
    config = config_from_args(args)
    lr = args.lr if args.lr is not None else default_lr(args.momentum)
    options = TrainOptions(lr, args.momentum, qas=False if args.no_qas else None, int8_update=args.int8_update,
                           loss=args.loss)
    board, program, emitted, est = compile_to_project(
        model, config, options, args.target, Path(args.output),
        ram_kb=args.ram_kb, flash_kb=args.flash_kb, stack_kb=args.stack_kb,
        memory=dataclasses.replace(MemoryOptions(), **{name: False for name in args.no_memory_pass},
                                   **({"patch_prefix": True} if args.patch_prefix else {})),
        persist=args.persist)
    print(f"wrote {args.output} for {board.description}; its C compiles ({board.cc}, checked)")
    precision = ("int8, with QAS" if not args.no_qas else "int8, no QAS") if model.is_quantized else "float32"
    outputs = f"{model.num_classes} classes" if args.loss == "cross-entropy" else f"{model.num_classes} outputs, mse"
    print(f"  model {model.source}: input {tuple(model.input_shape)}, {outputs}, {precision}")
    print(f"  trains {len(program.trainable.names)} tensors: {', '.join(program.trainable.names)}")
    print(f"  SGD: learning rate {lr:g}{'' if args.lr is not None else ' (default)'}, momentum {args.momentum:g}")
    print(f"  planned RAM {est.ram_bytes} bytes (arena {est.arena_bytes}, trainable {est.trainable_bytes}, "
          f"momentum {est.momentum_bytes}, stack {est.stack_bytes}); frozen weights in flash "
          f"{est.frozen_flash_bytes} bytes")
    print(f"  arena peak at {est.peak_call}; memory_report.json has the breakdown")
    patched = emitted.patched_prefix.get("train_step")
    if patched:
        _, shape, rows, cols = patched
        print(f"  patched prefix: the frozen start (up to its {'x'.join(map(str, shape[1:]))} tensor) runs in "
              f"{rows}x{cols} tiles")
    elif args.patch_prefix:
        print("  patched prefix: no grid lowers this step's peak (it is not in the frozen start)")
    if emitted.persist:
        print(f"  persistence: {est.persist_flash_bytes} bytes of flash at the end of the budget (2 slots of "
              f"{emitted.persist.slot_bytes}, state {emitted.persist.payload_bytes} bytes); tt_save()/tt_restore()")
    print(f"  build it: make -C {args.output}   (or: tinytrain run {args.output} --data DATA.npz)")
    return 0


def _cmd_run(args) -> int:
    from .data import check_against_model, load_npz
    from .session import train_and_evaluate
    from .targets.boards import get_board

    project = Path(args.project)
    report = _project_report(project)
    board = get_board(report["board"])
    d = load_npz(args.data)
    check_against_model(args.data, d, report["model"])  # before the build, one clear message
    result = train_and_evaluate(board, project, d["x_train"], d["y_train"], d["x_test"], d["y_test"],
                                epochs=args.epochs, progress=not args.json, timeout_s=args.timeout)
    _report(result, args.json)
    return 0


def _cmd_profile(args) -> int:
    from .data import load_npz
    from .profile import format_table, plot, profile_project, pyplot
    from .targets.boards import get_board

    if args.plot:
        pyplot()  # fail before the run if matplotlib is missing
    project = Path(args.project)
    board = get_board(_project_report(project)["board"])
    sample, label = None, 0
    if args.data:
        d = load_npz(args.data)
        sample, label = d["x_train"][0], int(d["y_train"][0])
    prof = profile_project(board, project, sample, label, timeout_s=args.timeout)
    if args.plot:
        plot(prof, Path(args.plot))
    print(json.dumps(prof) if args.json else format_table(prof, args.top))
    return 0


def _project_report(project: Path) -> dict:
    report = project / "memory_report.json"
    if not report.is_file():
        raise TinyTrainError(f"{project} is not a project written by `tinytrain compile` (no memory_report.json)")
    try:
        data = json.loads(report.read_text())
        intact = isinstance(data["board"], str) and {"input_shape", "num_classes"} <= set(data["model"])
    except (OSError, ValueError, TypeError, KeyError):
        intact = False
    if not intact:
        raise TinyTrainError(f"{report} is damaged: compile the project again")
    return data


def _cmd_demo(args) -> int:
    from . import demo

    t0 = time.time()
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    say("tvm-tinytrain demo: learn digits 5-9 on an emulated MCU, one sample at a time")
    (x_old, y_old), (x_train, y_train), (x_test, y_test) = demo.load_digits_split()
    say(f"  data: scikit-learn digits, {len(x_old)} samples of 0-4 to pretrain; "
        f"{len(x_train)} of 5-9 to learn on device, {len(x_test)} held out")
    model = demo.pretrain(x_old, y_old)
    say(f"  pretrained DigitsNet on 0-4 on the host, new 5-class head ({time.time() - t0:.0f} s)")
    import torch

    from .frontend.torch_frontend import import_torch
    precision = "float32" if args.float else "int8"
    imported = import_torch(model, torch.zeros(demo.INPUT_SHAPE), source="tvm_tinytrain.demo.DigitsNet")
    if precision == "int8":
        from .quantize import post_training_quantize
        imported = post_training_quantize(imported, x_old[:demo.CALIBRATION_SAMPLES])
        say(f"  quantized to int8 (per-channel weights, activations calibrated on "
            f"{demo.CALIBRATION_SAMPLES} samples of 0-4); training with QAS")
    out = Path(args.out or f"out/demo-{args.target}")
    board, program, _, est = compile_to_project(
        imported, demo.DEMO_CONFIG, demo.DEMO_OPTIONS[precision], args.target, out)
    say(f"  compiled {out}: trains {', '.join(program.trainable.names)}; planned RAM {est.ram_bytes} bytes")
    say(f"  training on {board.description} ...")
    from .session import train_and_evaluate
    result = train_and_evaluate(board, out, x_train, y_train, x_test, y_test,
                                epochs=args.epochs or demo.DEMO_EPOCHS[precision], progress=not args.json)
    result["precision"] = precision + (" + QAS" if precision == "int8" else "")
    result["seconds"] = round(time.time() - t0, 1)
    _report(result, args.json)
    return 0


def _report(result: dict, as_json: bool) -> None:
    result = {k: v for k, v in result.items() if k not in ("params", "losses")}
    if as_json:
        print(json.dumps(result))
        return
    ins = result["instructions_per_step"]
    curve = " ".join(f"{v:.2f}" for v in result["loss_curve"])
    print(f"  ran on {result['ran_on']}: {result['steps']} training steps")
    print(f"  loss (mean over 20 chunks of steps): {curve}")
    if result["accuracy_before"] is not None:
        print(f"  held-out accuracy: before {result['accuracy_before']:.3f}  after {result['accuracy_after']:.3f}")
    else:
        print(f"  held-out reconstruction error (mean squared): before {result['reconstruction_error_before']:.4g}"
              f"  after {result['reconstruction_error_after']:.4g}")
    print(f"  peak SRAM {result['peak_sram_bytes']} bytes (static {result['static_ram_bytes']}, "
          f"stack high-water {result['stack_high_water_bytes']}), flash {result['flash_bytes']} bytes")
    print(f"  instructions per training step: {'n/a on host' if ins is None else f'{ins:,.0f}'}")


@dataclass(frozen=True)
class ModelSpec:
    """A model as the command line names it: what a worker process needs to load it again."""

    model: str
    input_shape: str | None = None
    weights: str | None = None
    num_classes: int | None = None
    factory_args: tuple[str, ...] = ()
    quantize: str | None = None
    calibration: str | None = None
    calibration_samples: int = CALIBRATION_SAMPLES

    @classmethod
    def from_args(cls, args) -> "ModelSpec":
        return cls(args.model, args.input_shape, args.weights, args.num_classes, tuple(args.factory_args),
                   args.quantize, args.calibration, args.calibration_samples)

    def load(self):
        return quantize_from_args(load_model(self.model, self.input_shape, self.weights, self.num_classes,
                                             self.factory_args), self)

    def files(self) -> list[Path]:
        """The files whose bytes make the model (for cache keys)."""
        named = [self.model.partition(":")[0], self.weights, self.calibration]
        return [Path(f) for f in named if f and Path(f).is_file()]


def _cmd_search(args) -> int:
    from . import contribution, search
    from .contribution import Contributions, Scheme, Setup, run_cache
    from .data import check_against_model, load_npz
    from .layers import find_layers

    if args.plot:
        from .profile import pyplot
        pyplot()  # fail before the work if matplotlib is missing
    for name in ("steps", "seeds", "population", "generations", "last_layers", "bias_points"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise TinyTrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    out = Path(args.output)
    work = Path(args.work_dir) if args.work_dir else out.with_name(out.stem + ".work")
    spec = ModelSpec.from_args(args)
    model = spec.load()
    n_layers = len(find_layers(model.mod["main"])) - 1
    if n_layers < 1:
        raise TinyTrainError(f"{model.source} has no layer besides its classifier: there is nothing to search")
    d = load_npz(args.data)
    check_against_model(args.data, d, {"input_shape": list(model.input_shape), "num_classes": model.num_classes})
    train, val = contribution.split_train(d["x_train"], d["y_train"])
    lr = args.lr if args.lr is not None else default_lr(args.momentum)
    options = TrainOptions(lr, args.momentum, qas=False if args.no_qas else None, int8_update=args.int8_update)
    setup = Setup(args.steps or len(train[1]), tuple(range(args.seeds)), options)
    memory = dataclasses.replace(MemoryOptions(), **{name: False for name in args.no_memory_pass})
    budget = search.Budget(args.ram_kb * 1024, args.flash_kb * 1024)
    key = contribution.fingerprint(spec, setup, train, val)
    price_key = f"{key}|{memory}|{args.stack_kb}"

    pool = contribution.process_pool(args.workers)

    pricer = search.pool_pricer(pool, spec, options, memory, args.stack_kb * 1024, work / "prices.json", price_key)
    first = max(0, n_layers - args.last_layers) if args.last_layers else 0

    def affordable(base_k: int) -> list[int]:
        return search.affordable_layers(pricer, base_k, range(first, n_layers), budget)

    print(f"tinytrain search: {model.source}, {n_layers} layers + classifier; {len(train[1])} training and "
          f"{len(val[1])} validation samples; work dir {work}")
    cache = run_cache(work / "runs.json", key)
    with pool:
        cheapest = pricer([Scheme(0)])[0]
        if not budget.fits(cheapest):  # before hours of analysis
            raise TinyTrainError(f"even the classifier alone needs {cheapest['ram_bytes']} bytes of RAM and "
                                 f"{cheapest['flash_bytes']} of flash; the budget is {budget.ram_bytes} and "
                                 f"{budget.flash_bytes}: raise --ram-kb or --flash-kb")
        contrib: Contributions = contribution.analyse(spec, n_layers, setup, train, val, cache,
                                                      layers_for=affordable, pool=pool, ray_address=args.ray,
                                                      ks=contribution.bias_ks(n_layers, args.bias_points),
                                                      progress=True)
        result = search.evolve(contrib, pricer, budget, population=args.population,
                               generations=args.generations, seed=args.seed,
                               state_path=work / "search_state.json", fingerprint=f"{price_key}|{budget}",
                               progress=True)
    project = Path(args.project) if args.project else work / "project"
    board, program, _, est = compile_to_project(model, result.best.config, options, args.target, project,
                                                ram_kb=args.ram_kb, flash_kb=args.flash_kb,
                                                stack_kb=args.stack_kb, memory=memory)
    report = {
        "model": model.source, "data": args.data, "target": board.name, "budget": {"ram_bytes": budget.ram_bytes,
                                                                  "flash_bytes": budget.flash_bytes},
        "setup": {"steps": setup.steps, "seeds": list(setup.seeds), "lr": lr, "momentum": args.momentum,
                  "train_samples": len(train[1]), "validation_samples": len(val[1]),
                  "population": args.population, "generations": args.generations, "seed": args.seed},
        "contributions": contrib.to_json(),
        "chosen": {"scheme": result.best.key, "config": result.best.config_dict(), "gain": result.gain,
                   "estimated": result.price,
                   "compiled": {"ram_bytes": est.ram_bytes, "arena_bytes": est.arena_bytes,
                                "trainable_bytes": est.trainable_bytes, "momentum_bytes": est.momentum_bytes,
                                "flash_bytes": est.frozen_flash_bytes + est.trainable_bytes,
                                "peak_call": est.peak_call, "project": str(project)}},
        "pareto_front": search.pareto_front(result.candidates),
        "candidates": result.candidates,
    }
    comment = (f"# tinytrain search: {model.source} on {args.data}, RAM budget {args.ram_kb} KB on {board.name}\n"
               f"# summed validation gain +{100 * result.gain:.1f} points; compiled: {est.ram_bytes} bytes of RAM "
               f"planned ({project})\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(comment + yaml.safe_dump(result.best.config_dict(), sort_keys=False))
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        search.plot(result, budget, Path(args.plot), f"{model.source}: {len(result.candidates)} schemes priced")
    print(f"wrote {out}: {result.best.key} (classifier, biases of the last {result.best.n_bias} layers, "
          f"{len(result.best.weights)} weights), summed validation gain +{100 * result.gain:.1f} points")
    print(f"  compiled for {board.name} in {project}: planned RAM {est.ram_bytes} bytes of {budget.ram_bytes} "
          f"(search estimate {result.price['ram_bytes']}); report {out.with_suffix('.json')}")
    print(f"  use it: tinytrain compile {args.model} --config {out} ...")
    return 0


def _cmd_targets(_args) -> int:
    from .targets.boards import BOARDS

    for name, board in BOARDS.items():
        print(f"{name:<10} {board.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
