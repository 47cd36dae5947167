"""What a model is asked to predict, and how its loss and error are counted.

A dataset yields batches ``(x, y)``. Two kinds of data, two tasks:

- **labelled** data (``y``: one class index per example) is read by a **classifier**, whose
  logits are (N, classes): loss = CE(f(x_i), y_i), an error when argmax f(x_i) != y_i, one
  prediction per example.
- **tokens** (``x``: N x T integer token ids; ``y`` is ``x`` itself) are read by a **causal
  language model**, whose logits are (N, T, vocab) and whose position t predicts token t + 1:
  loss = CE(f(x)_{i,t}, x_{i,t+1}), an error when argmax f(x)_{i,t} != x_{i,t+1}, for every
  t < T - 1, so N (T - 1) predictions per batch.

Every loss and error of the engine (training, evaluation, the LMC path of an analysis) is one of
these two, read from the arch's :attr:`~llfc_core.archs.base.Architecture.task`: a mean loss is
the summed loss over the number of predictions, an error rate the errors over the predictions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

DataKind = Literal["labelled", "tokens"]
"""What a dataset holds: examples with class labels, or token sequences."""


class Task(ABC):
    """How logits are scored against a batch's targets ``y``."""

    name: ClassVar[str]
    data_kind: ClassVar[DataKind]
    """The kind of dataset the task reads."""

    @abstractmethod
    def mean_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean cross-entropy over the batch's predictions (what training minimises)."""

    @abstractmethod
    def summed(
        self, logits: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed cross-entropy, number of wrong predictions) over the batch, on its device:
        running totals add them up without a host synchronisation per batch."""

    @abstractmethod
    def predictions(self, targets: torch.Tensor) -> int:
        """How many predictions the batch holds: what the sums of :meth:`summed` divide by."""


class Classification(Task):
    """One class per example: logits (N, classes), ``y`` (N,) class indices."""

    name: ClassVar[str] = "classification"
    data_kind: ClassVar[DataKind] = "labelled"

    def mean_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets)

    def summed(
        self, logits: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss = F.cross_entropy(logits.float(), targets, reduction="sum")
        return loss, (logits.argmax(1) != targets).sum()

    def predictions(self, targets: torch.Tensor) -> int:
        return int(targets.shape[0])


class NextToken(Task):
    """Next-token prediction: logits (N, T, vocab), ``y`` the (N, T) tokens themselves; the
    logits at position t are scored against token t + 1."""

    name: ClassVar[str] = "next_token"
    data_kind: ClassVar[DataKind] = "tokens"

    @staticmethod
    def _aligned(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N (T - 1), vocab) logits and their (N (T - 1),) next tokens."""
        predicting = logits[:, :-1]
        return predicting.reshape(-1, predicting.shape[-1]), targets[:, 1:].reshape(-1)

    def mean_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(*self._aligned(logits, targets))

    def summed(
        self, logits: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        predicting, following = self._aligned(logits, targets)
        loss = F.cross_entropy(predicting.float(), following, reduction="sum")
        return loss, (predicting.argmax(1) != following).sum()

    def predictions(self, targets: torch.Tensor) -> int:
        return int(targets.shape[0]) * max(int(targets.shape[1]) - 1, 0)


CLASSIFICATION = Classification()
NEXT_TOKEN = NextToken()
