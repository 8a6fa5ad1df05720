"""ResNet-50 as a real ``torch.nn.Module`` (torchvision's architecture, written out: torchvision
is not installed beside the pinned CPU torch), so the bench can train it, not only size it.

Its ``state_dict`` has the names, order, shapes and dtypes of torchvision's ``resnet50()``
(:mod:`plinius.lab.bench.workloads` lists the same tensors without torch; a test checks that
both agree). The weights are PyTorch's default initialisation: nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: bottleneck blocks per stage and their widths, as torchvision's ``resnet50()``
STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))
EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (the stride), 1x1 expand, plus the shortcut (projected when the shape
    changes): torchvision's ``Bottleneck`` (ResNet v1.5)."""

    def __init__(self, inplanes: int, width: int, stride: int, project: bool) -> None:
        super().__init__()
        out = width * EXPANSION
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if project:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        short = x if self.downsample is None else self.downsample(x)
        return self.relu(y + short)


class ResNet50(nn.Module):
    """torchvision's ``resnet50(num_classes=1000)``."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (width, blocks) in enumerate(STAGES, start=1):
            layers = []
            for b in range(blocks):
                stride = 2 if b == 0 and i > 1 else 1
                layers.append(Bottleneck(inplanes, width, stride, project=b == 0))
                inplanes = width * EXPANSION
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, len(STAGES) + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50_sgd(lr: float = 0.01, momentum: float = 0.9) -> tuple[ResNet50, Any]:
    """The model and the optimizer of the ``resnet50`` workload (SGD with momentum)."""
    model = ResNet50()
    return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)


__all__ = ["ResNet50", "resnet50_sgd"]
