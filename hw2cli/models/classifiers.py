"""Digit classifiers used by the P1 grader.

``LeNet`` has exactly the official MNIST-M classifier's module names and shapes, so its
``Classifier.pth`` (``{"state_dict": ...}``) loads. ``resnet34_svhn`` is timm's ResNet-34 with
a CIFAR-style stem (3×3 stride-1 first convolution, no max-pool), the grader's SVHN model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = ("lenet", "resnet34")


class LeNet(nn.Module):
    """conv1 (3→6, 5×5) → ReLU → max-pool → conv2 (6→16, 5×5) → ReLU → max-pool → fc1 256→128 → fc2 → fc3 → 10."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(256, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def resnet34_svhn(num_classes: int = 10) -> nn.Module:
    import timm

    model = timm.create_model("resnet34", pretrained=False, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build_classifier(arch: str) -> nn.Module:
    if arch == "lenet":
        return LeNet()
    if arch == "resnet34":
        return resnet34_svhn()
    raise ValueError(f"unknown classifier architecture {arch!r}; expected {' or '.join(ARCHITECTURES)}")
