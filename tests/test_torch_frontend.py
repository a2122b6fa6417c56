import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

from conftest import INPUT_SHAPE, ManyTanhs, ThreeUnsupported, make_small_net
from tvm_tinytrain.errors import MAX_LISTED_PROBLEMS, TinyTrainError, UnsupportedOpError
from tvm_tinytrain.frontend.torch_frontend import import_torch


def _run_main(imported, x):
    exe = tvm.compile(imported.mod, target="llvm")
    vm = relax.VirtualMachine(exe, tvm.cpu())
    args = [tvm.runtime.tensor(x)] + [tvm.runtime.tensor(v) for v in imported.params.values()]
    return vm["main"](*args).numpy()


def test_forward_matches_torch_with_batch_norm_folded(small_net, small_imported):
    x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)
    expected = small_net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(_run_main(small_imported, x), expected, rtol=1e-5, atol=1e-6)
    assert "batch_norm" not in small_imported.mod.script()
    assert "conv0.1.weight" not in small_imported.params  # folded into conv0.0


def test_params_keep_state_dict_names_in_order(small_imported):
    names = [p.name for p in small_imported.mod["main"].params[1:]]
    assert names == list(small_imported.params)
    assert names[:2] == ["conv0.0.weight", "conv0.0.bias"]
    assert names[-2:] == ["head.weight", "head.bias"]
    assert small_imported.num_classes == 4


def test_relu6_and_clamp_become_clip(small_imported):
    script = small_imported.mod.script()
    assert script.count("R.clip(") == 2
    assert "call_tir" not in script


def test_dropout_is_identity():
    class WithDropout(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.fc(self.drop(x.flatten(1)))

    imported = import_torch(WithDropout(), torch.zeros(1, 1, 2, 2))
    assert "dropout" not in imported.mod.script()


def test_unsupported_op_names_op_module_path_and_supported_list():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh())
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(self.features(x).mean((2, 3)))

    with pytest.raises(UnsupportedOpError) as err:
        import_torch(Net(), torch.zeros(1, 1, 5, 5))
    msg = str(err.value)
    assert "tanh" in msg and "features.1" in msg and "Tanh" in msg
    assert "Conv2d" in msg and "ReLU6" in msg  # the supported list



def test_every_unsupported_op_is_listed_with_its_module_in_graph_order():
    """Not only the first: three unsupported ops come in one error."""
    with pytest.raises(UnsupportedOpError) as err:
        import_torch(ThreeUnsupported(), torch.zeros(1, 2, 8, 8))
    msg = str(err.value)
    assert "\n" not in msg  # one line, as every error of the project (the fuzz harness's rule)
    assert msg.startswith("ThreeUnsupported: 3 ops cannot be trained (in graph order): "
                          "stem.1 (GELU): unsupported operator 'gelu' (aten.gelu); "
                          "block.1 (LeakyReLU): unsupported operator 'leaky_relu' (aten.leaky_relu); "
                          "block.gate (SoftGate): unsupported operator 'tanh' (aten.tanh) at conftest.py:"), msg
    assert ": return x * torch.tanh(x); Supported ops: AdaptiveAvgPool2d" in msg  # the user's own line
    assert msg.count("unsupported operator") == 3


def test_many_unsupported_ops_give_a_bounded_message():
    with pytest.raises(UnsupportedOpError) as err:
        import_torch(ManyTanhs(60), torch.zeros(1, 2, 4, 4))
    msg = str(err.value)
    assert msg.startswith("ManyTanhs: 60 ops cannot be trained")
    assert msg.count("aten.tanh") == MAX_LISTED_PROBLEMS
    assert f"... and {60 - MAX_LISTED_PROBLEMS} more;" in msg
    assert len(msg) < 4000  # the CLI's error line keeps the supported list


def test_dilation_is_refused():
    class Dilated(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, dilation=2)
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    with pytest.raises(UnsupportedOpError, match="dilation"):
        import_torch(Dilated(), torch.zeros(1, 1, 8, 8))


def test_batch_norm_without_conv_is_refused():
    class LoneBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(1)
            self.fc = nn.Linear(1, 2)

        def forward(self, x):
            return self.fc(self.bn(x).mean((2, 3)))

    with pytest.raises(UnsupportedOpError, match=r"bn \(BatchNorm2d\): batch norm"):
        import_torch(LoneBN(), torch.zeros(1, 1, 4, 4))


def test_input_must_be_batch_one_nchw():
    with pytest.raises(TinyTrainError, match="batch 1"):
        import_torch(make_small_net(), torch.zeros(2, *INPUT_SHAPE[1:]))


def test_explicit_constant_pad_trains_like_torch():
    class Padded(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.fc = nn.Linear(2, 3)

        def forward(self, x):
            x = nn.functional.pad(x, (1, 2, 0, 1), value=0.5)
            return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    from tvm_tinytrain.config import SparseUpdateConfig
    from tvm_tinytrain.pipeline import build_training_program
    from tvm_tinytrain.reference import RelaxVMTrainer

    torch.manual_seed(0)
    net = Padded()
    x = np.random.default_rng(0).standard_normal((1, 1, 6, 6)).astype(np.float32)
    program = build_training_program(import_torch(net, torch.zeros(1, 1, 6, 6)),
                                     SparseUpdateConfig(params=["conv.weight"]))
    loss = RelaxVMTrainer(program).step(x, 1)
    expected = nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.tensor([1])).item()
    assert loss == pytest.approx(expected, rel=1e-6)


def test_reflect_pad_is_refused():
    class Reflect(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(1, 2)

        def forward(self, x):
            return self.fc(nn.functional.pad(x, (1, 1, 1, 1), mode="reflect").mean((2, 3)))

    with pytest.raises(UnsupportedOpError, match="reflect|reflection_pad"):
        import_torch(Reflect(), torch.zeros(1, 1, 4, 4))


# ------------------------------------------------------------------ MobileNetV3-style ops


def test_mobilenet_v3_ops_train_as_torch_does_on_the_host_and_a_board(tmp_path):
    """Hardswish, SiLU, a sigmoid-gated squeeze-excitation, concatenation, scalar arithmetic
    and Hardsigmoid: the compiled step's losses and updated weights are torch autograd's +
    SGD with momentum (the depthwise and pointwise weights train too), and a Cortex-M7 run
    computes the host's bits."""
    from conftest import make_mobilenet_v3_net, torch_sgd_reference
    from tvm_tinytrain.config import SparseUpdateConfig
    from tvm_tinytrain.pipeline import TrainOptions, build_training_program
    from tvm_tinytrain.session import run_stream
    from tvm_tinytrain.targets.boards import get_board
    from tvm_tinytrain.targets.harness import DUMP, TRAIN, Record
    from tvm_tinytrain.targets.project import write_project

    net = make_mobilenet_v3_net()
    config = SparseUpdateConfig(n_bias_update=5, manual_weight_idx=(1, 2, 3, 4), weight_update_ratio=(1, 1, 1, 0.5))
    program = build_training_program(import_torch(net, torch.zeros(1, 2, 8, 8)), config,
                                     TrainOptions(lr=0.05, momentum=0.9))
    rng = np.random.default_rng(1)
    xs, ys = rng.standard_normal((6, 2, 8, 8)).astype(np.float32), rng.integers(0, 3, 6)
    records = [Record(TRAIN, x, int(y)) for x, y in zip(xs, ys)] + [Record(DUMP, xs[0], 0)]
    ref_losses, ref_params = torch_sgd_reference(net, program, xs, ys)
    outputs = {}
    for target in ("host", "cortex-m7"):
        write_project(program, tmp_path / target, get_board(target), ram_bytes=256 * 1024, flash_bytes=4 << 20)
        outputs[target] = run_stream(get_board(target), tmp_path / target, records).output
    host = outputs["host"]
    np.testing.assert_allclose(host.losses, ref_losses, rtol=1e-5)
    for name in program.trainable.names:
        np.testing.assert_allclose(host.params[0][name], ref_params[name].ravel(), rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.array_equal(np.array(outputs["cortex-m7"].losses), np.array(host.losses))
    for name in program.trainable.names:
        assert np.array_equal(outputs["cortex-m7"].params[0][name], host.params[0][name]), name
