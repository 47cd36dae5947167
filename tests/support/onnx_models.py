"""A lab's own models as the ONNX tests export them: classes with named layers, written to one
.onnx file by torch.onnx.export in training mode (BatchNorm stays a node)."""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn


class DigitsMLP(nn.Module):
    """A lab's MLP as a class with named layers; one ReLU module called twice."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, width)
        self.fc2 = nn.Linear(width, width)
        self.out = nn.Linear(width, 10)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.relu(self.fc2(self.relu(self.fc1(x)))))


class DigitsCNN(nn.Module):
    """A small CNN with BatchNorm over 1 x 8 x 8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def training_mode_export(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """The .onnx file of the TorchScript-based exporter in training mode, batch dynamic."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.train(),
            (torch.zeros(2, *input_shape),),
            buffer,
            dynamo=False,
            training=torch.onnx.TrainingMode.TRAINING,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )
    return buffer.getvalue()


def exported_mlp(seed: int, width: int = 32) -> bytes:
    """An untrained DigitsMLP of ``seed``, exported."""
    torch.manual_seed(seed)
    return training_mode_export(DigitsMLP(width), (64,))
