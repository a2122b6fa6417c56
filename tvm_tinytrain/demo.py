"""The built-in demo: transfer learning on an emulated MCU with real data.

scikit-learn's handwritten digits (1,797 real 8x8 scans, shipped inside the package):
a small CNN is pretrained on the host on digits 0-4, gets a new 5-class head, is quantized
to int8 (post-training quantization calibrated on 0-4 digits; `--float` keeps it float),
and the compiled training program learns digits 5-9 on the device, one sample at a time,
updating only the last layers (a sparse update) with QAS. Accuracy is measured on held-out
5-9 digits by the device itself, before and after.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .config import SparseUpdateConfig
from .pipeline import TrainOptions

SEED = 0
INPUT_SHAPE = (1, 1, 8, 8)
# Train the last conv (weights and bias), the bias of the one before, and the new head.
DEMO_CONFIG = SparseUpdateConfig(n_bias_update=2, manual_weight_idx=(3,))
DEMO_LR = 0.1
DEMO_MOMENTUM = 0.0
DEMO_EPOCHS = {"float32": 2, "int8": 3}  # passes over the training stream
CALIBRATION_SAMPLES = 200
# int8: the default update, stochastic rounding (bench/int8_update.py: on this task as good
# as float32 master copies, with 5.5 KB less RAM).
DEMO_OPTIONS = {"float32": TrainOptions(DEMO_LR, DEMO_MOMENTUM), "int8": TrainOptions(DEMO_LR, DEMO_MOMENTUM)}


class DigitsNet(nn.Module):
    """A small MCU-style CNN: conv-BN-ReLU, a depthwise-separable block with a residual, ReLU6."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
        self.down = nn.Sequential(nn.Conv2d(8, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(24, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.pw(self.dw(x))
        x = self.down(x)
        x = torch.flatten(self.pool(x), 1)
        return self.classifier(self.dropout(x))


def load_digits_split():
    """Digits as float32 NCHW in [0, 1]; classes 0-4 for pretraining, 5-9 (relabelled
    0-4) split into a training stream and a held-out test set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32).reshape(-1, *INPUT_SHAPE[1:])
    y = digits.target.astype(np.int64)
    old, new = y < 5, y >= 5
    x_new_train, x_new_test, y_new_train, y_new_test = train_test_split(
        x[new], y[new] - 5, test_size=0.3, random_state=SEED, stratify=y[new])
    return (x[old], y[old]), (x_new_train, y_new_train), (x_new_test, y_new_test)


def pretrain(x: np.ndarray, y: np.ndarray, epochs: int = 15) -> DigitsNet:
    """Ordinary float training on the host (a few seconds), then a fresh 5-class head."""
    torch.manual_seed(SEED)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net: threads only add contention (7 s instead of 40 s here)
    model = DigitsNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    torch.set_num_threads(threads)
    model.eval()
    model.classifier = nn.Linear(24, 5)  # the new task's head, freshly initialised
    return model
