"""The example CNN for 28×28 digits: ``examples/torch_mnist.py`` trains it and ``plinius bench``
measures mirroring overhead on it, so both run the same model (defined once, here)."""

from __future__ import annotations

import torch
from torch import nn


class Net(nn.Module):
    """Two convolutions and two fully connected layers; dropout draws from torch's RNG, which
    the mirror carries, so a resumed run drops the same units as an uninterrupted one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = self.drop(torch.relu(self.fc1(x.flatten(1))))
        return self.fc2(x)
