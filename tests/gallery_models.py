"""A gallery of MCU models as users write them, in PyTorch, from the published architectures.

- ResNet-8, DS-CNN and MobileNetV1-0.25: the MLPerf Tiny v1.0 reference models of image
  classification (CIFAR-10), keyword spotting (Speech Commands, MFCC) and visual wake
  words, after the reference Keras definitions (mlcommons/tiny, benchmark/training).
  Dropout is left out: the models are handed over in eval mode, where it is the identity.
- The fully connected autoencoder, MLPerf Tiny v1.0's anomaly detector (ToyADMOS, 640
  log-mel features), with its BatchNorm1d layers; it trains with `--loss mse`.
- MobileNetV3-small (Howard et al., "Searching for MobileNetV3", ICCV 2019, table 2), all
  11 blocks, at width 0.35 (one of the paper's multipliers, its head's 1024-wide hidden layer
  scaled alike) and 64x64 input, so that its frozen weights (750 KB) fit 1 MB of flash and a
  training step 256 KB of RAM.

Each factory takes keyword arguments (`num_classes`, `seed`, ...) and returns
`(model, example_input)` in eval mode, so `tinytrain compile gallery_models.py:resnet8`
needs no `--input-shape`. The weights are seeded: He-normal convs, as in the references,
and random running statistics and affine parameters in every batch norm, so that folding
it into its layer is exercised. The models that are a plain chain (DS-CNN, MobileNetV1,
the autoencoder) also come as a bare `nn.Sequential` of layers (`*_sequential`, parameters named
`0.weight`, `4.bias`, ...) with the nested form's weights.

GALLERY and SEQUENTIAL map a model's name to its factories, SCHEMES to a sparse update
that fits 256 KB (tests/test_gallery.py trains them all, bench/gallery.py on real data).
"""

from __future__ import annotations

import torch
from torch import nn

# ---------------------------------------------------------------- building blocks


def conv_bn(cin: int, cout: int, k=3, stride=1, groups=1, act=nn.ReLU, padding=None) -> nn.Sequential:
    """Conv (no bias, 'same' padding unless given) + BatchNorm (+ activation), as in the references."""
    padding = (k // 2 if isinstance(k, int) else tuple(n // 2 for n in k)) if padding is None else padding
    layers = [nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act()] if act else []))


def _layers(*modules: nn.Module) -> list[nn.Module]:
    """The leaf layers of plain chains, in order (to flatten a nested model to a Sequential)."""
    out = []
    for m in modules:
        children = list(m.children())
        out += _layers(*children) if isinstance(m, (nn.Sequential, DepthwiseSeparable)) else [m]
    return out


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 conv-BN-ReLU, then pointwise 1x1 conv-BN-ReLU (MobileNetV1, DS-CNN)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.depthwise = conv_bn(cin, cin, 3, stride, groups=cin)
        self.pointwise = conv_bn(cin, cout, 1)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


def _init(model: nn.Module, seed: int) -> nn.Module:
    """He-normal conv weights (the references' `he_normal`, which keeps the signal alive through
    the depth: torch's default lets MobileNetV1's logits lose the input), then random running
    statistics and affine parameters for every batch norm, so that folding must use them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0.0, (2.0 / m.weight[0].numel()) ** 0.5, generator=g)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model.eval()


# ---------------------------------------------------------------- ResNet-8 (MLPerf Tiny IC)


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BNs and a ReLU after the sum; a strided block's shortcut is a 1x1 conv
    with bias and no BN, as in the reference (resnet_v1_eembc)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3, 1, act=None)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet8(nn.Module):
    """MLPerf Tiny v1.0 image classification: ResNet-8 on 32x32 RGB (CIFAR-10). A 3x3 stem
    of 16 channels, three residual blocks of 16, 32 (stride 2) and 64 (stride 2) channels,
    global average pooling and a linear classifier; 78 K parameters."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.stages = nn.Sequential(ResidualBlock(16, 16, 1), ResidualBlock(16, 32, 2), ResidualBlock(32, 64, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.stages(self.stem(x))).flatten(1))


def resnet8(num_classes: int = 10, seed: int = 0):
    """ResNet-8 (nested modules) and a 1x3x32x32 example input."""
    torch.manual_seed(seed)
    return _init(ResNet8(num_classes), seed), torch.zeros(1, 3, 32, 32)


# ---------------------------------------------------------------- DS-CNN (MLPerf Tiny KWS)


class DSCNN(nn.Module):
    """MLPerf Tiny v1.0 keyword spotting: DS-CNN (small) on 49x10 MFCC features (Speech
    Commands, 12 classes; Zhang et al. 2017, "Hello Edge"). A 10x4 stride-2 conv of 64
    channels, four depthwise-separable blocks of 64, global average pooling (the reference's
    24x5 average pool over the 25x5 map) and a linear classifier; 23 K parameters."""

    def __init__(self, num_classes: int = 12, channels: int = 64):
        super().__init__()
        self.stem = conv_bn(1, channels, (10, 4), 2, padding=(5, 1))  # TF's 'same': 25x5 out
        self.blocks = nn.Sequential(*[DepthwiseSeparable(channels, channels) for _ in range(4)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.blocks(self.stem(x))).flatten(1))


def dscnn(num_classes: int = 12, seed: int = 0):
    """DS-CNN (nested modules) and a 1x1x49x10 example input."""
    torch.manual_seed(seed)
    return _init(DSCNN(num_classes), seed), torch.zeros(1, 1, 49, 10)


def dscnn_sequential(num_classes: int = 12, seed: int = 0):
    """DS-CNN as a bare nn.Sequential of its layers (Conv2d, BatchNorm2d, ReLU, ...)."""
    model, x = dscnn(num_classes, seed)
    return nn.Sequential(*_layers(model.stem, model.blocks), model.pool, nn.Flatten(), model.classifier).eval(), x


# ---------------------------------------------------------------- MobileNetV1-0.25 (MLPerf Tiny VWW)

# (output channels at width 1, stride) of the 13 depthwise-separable blocks
MOBILENET_V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + \
    [(1024, 2), (1024, 1)]


class MobileNetV1(nn.Module):
    """MLPerf Tiny v1.0 visual wake words: MobileNetV1 at width 0.25 on 96x96 RGB, 2 classes
    (Howard et al. 2017). A 3x3 stride-2 stem of 8 channels, 13 depthwise-separable blocks
    up to 256 channels, global average pooling and a linear classifier; 214 K parameters."""

    def __init__(self, num_classes: int = 2, width: float = 0.25):
        super().__init__()
        cin = int(32 * width)
        self.stem = conv_bn(3, cin, 3, 2)
        blocks = []
        for cout, stride in MOBILENET_V1_BLOCKS:
            blocks.append(DepthwiseSeparable(cin, int(cout * width), stride))
            cin = int(cout * width)
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.blocks(self.stem(x))).flatten(1))


def mobilenet_v1(num_classes: int = 2, width: float = 0.25, resolution: int = 96, seed: int = 0):
    """MobileNetV1 (nested modules) and a 1x3x96x96 example input."""
    torch.manual_seed(seed)
    return _init(MobileNetV1(num_classes, width), seed), torch.zeros(1, 3, resolution, resolution)


def mobilenet_v1_sequential(num_classes: int = 2, width: float = 0.25, resolution: int = 96, seed: int = 0):
    """MobileNetV1 as a bare nn.Sequential of its layers."""
    model, x = mobilenet_v1(num_classes, width, resolution, seed)
    return nn.Sequential(*_layers(model.stem, model.blocks), model.pool, nn.Flatten(), model.classifier).eval(), x


# ---------------------------------------------------------------- MobileNetV3-small


def make_divisible(v: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding: to a multiple of 8, never below 90% of v."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class SqueezeExcite(nn.Module):
    """Global pool, 1x1 conv to a quarter of the channels, ReLU, 1x1 conv, hard sigmoid, scale."""

    def __init__(self, channels: int):
        super().__init__()
        squeeze = make_divisible(channels // 4)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    """MobileNetV3's bneck: 1x1 expansion (unless the expansion is the input width), k x k
    depthwise, optional squeeze-excite, linear 1x1 projection, identity shortcut if the
    shape is kept."""

    def __init__(self, cin: int, expand: int, cout: int, k: int, stride: int, se: bool, act):
        super().__init__()
        self.expand = conv_bn(cin, expand, 1, act=act) if expand != cin else nn.Identity()
        self.depthwise = conv_bn(expand, expand, k, stride, groups=expand, act=act)
        self.se = SqueezeExcite(expand) if se else nn.Identity()
        self.project = conv_bn(expand, cout, 1, act=None)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


# Howard et al. 2019, table 2: kernel, expansion, output channels, SE, activation, stride
MOBILENET_V3_SMALL_BLOCKS = [
    (3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1),
]


class MobileNetV3Small(nn.Module):
    """MobileNetV3-small (Howard et al. 2019): a 3x3 stride-2 hard-swish stem, the 11 bnecks
    of table 2, a 1x1 conv to 6x the last width with hard-swish, global pooling, a hidden
    linear layer with hard-swish and the classifier; all widths scaled by `width` (rounded
    to multiples of 8)."""

    def __init__(self, num_classes: int = 10, width: float = 0.35):
        super().__init__()
        acts = {"RE": nn.ReLU, "HS": nn.Hardswish}
        c = lambda n: make_divisible(n * width)  # noqa: E731
        self.stem = conv_bn(3, c(16), 3, 2, act=nn.Hardswish)
        blocks, cin = [], c(16)
        for k, expand, cout, se, act, stride in MOBILENET_V3_SMALL_BLOCKS:
            blocks.append(InvertedResidual(cin, c(expand), c(cout), k, stride, se, acts[act]))
            cin = c(cout)
        self.blocks = nn.Sequential(*blocks)
        self.last = conv_bn(cin, c(576), 1, act=nn.Hardswish)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.hidden = nn.Sequential(nn.Linear(c(576), c(1024)), nn.Hardswish())
        self.classifier = nn.Linear(c(1024), num_classes)

    def forward(self, x):
        return self.classifier(self.hidden(self.pool(self.last(self.blocks(self.stem(x)))).flatten(1)))


def mobilenet_v3_small(num_classes: int = 10, width: float = 0.35, resolution: int = 64, seed: int = 0):
    """MobileNetV3-small 0.35 (nested modules) and a 1x3x64x64 example input."""
    torch.manual_seed(seed)
    return _init(MobileNetV3Small(num_classes, width), seed), torch.zeros(1, 3, resolution, resolution)


# ---------------------------------------------------------------- FC autoencoder (MLPerf Tiny AD)


class FCAutoencoder(nn.Module):
    """MLPerf Tiny v1.0 anomaly detection: the fully connected autoencoder on 640 features
    (5 frames of 128 log-mel bands, ToyADMOS): four Linear-BN-ReLU layers of 128, a
    bottleneck of 8, four of 128 again, and a linear output of 640. It trains on its
    reconstruction error (`tinytrain compile --loss mse`)."""

    def __init__(self, inputs: int = 640, hidden: int = 128, code: int = 8):
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(i, o), nn.BatchNorm1d(o), nn.ReLU())

        self.encoder = nn.Sequential(block(inputs, hidden), *[block(hidden, hidden) for _ in range(3)],
                                     block(hidden, code))
        self.decoder = nn.Sequential(block(code, hidden), *[block(hidden, hidden) for _ in range(3)],
                                     nn.Linear(hidden, inputs))

    def forward(self, x):
        return self.decoder(self.encoder(x))


def fc_autoencoder(inputs: int = 640, seed: int = 0):
    """The autoencoder (nested modules) and a 1x640 example input."""
    torch.manual_seed(seed)
    return _init(FCAutoencoder(inputs), seed), torch.zeros(1, inputs)


def fc_autoencoder_sequential(inputs: int = 640, seed: int = 0):
    """The autoencoder as a bare nn.Sequential of its layers."""
    model, example = fc_autoencoder(inputs, seed)
    return nn.Sequential(*_layers(model.encoder, model.decoder)).eval(), example


# ---------------------------------------------------------------- the gallery

# name -> factory of the nested form; SEQUENTIAL: name -> factory of the bare nn.Sequential
GALLERY = {
    "resnet8": resnet8,
    "dscnn": dscnn,
    "mbv1": mobilenet_v1,
    "mbv3": mobilenet_v3_small,
    "autoencoder": fc_autoencoder,
}
SEQUENTIAL = {
    "dscnn": dscnn_sequential,
    "mbv1": mobilenet_v1_sequential,
    "autoencoder": fc_autoencoder_sequential,
}
CLASSIFIERS = [name for name in GALLERY if name != "autoencoder"]  # take num_classes
PTQ = ["resnet8", "dscnn", "mbv1", "mbv3", "autoencoder"]

# name -> `tinytrain compile` flags: a sparse update in the spirit of the paper's schemes, the
# biases of the last layers and part of the input channels of the last conv(s) (and the
# classifier); layer indices count from the input and are the same in every form of a model.
# Each fits 256 KB of RAM on Cortex-M4, float32 and int8. The autoencoder trains its code
# layers and every hidden bias on its reconstruction error, not its 640-wide output layer
# (327 KB of float32 weights); its float32 weights take 1 MB of flash.
SCHEMES = {
    "resnet8": ["--n-bias-update", "3", "--weight-idx", "7", "--ratio", "0.25"],     # last block
    "dscnn": ["--n-bias-update", "4", "--weight-idx", "6", "8", "--ratio", "0.5", "0.5"],  # last 2 pointwise
    "mbv1": ["--n-bias-update", "4", "--weight-idx", "26", "--ratio", "0.125"],      # last pointwise
    "mbv3": ["--n-bias-update", "5", "--weight-idx", "50", "51", "--ratio", "0.5", "0.5"],  # projection, last conv
    "autoencoder": ["--loss", "mse", "--n-bias-update", "9", "--weight-idx", "4", "5", "--no-classifier",
                    "--flash-kb", "2048"],
}
