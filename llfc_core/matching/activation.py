"""Activation matching (Git Re-Basin): align B's hidden units to A's by feature correlation.

For each permutation p, the units it acts on are observed at the ReLU outputs listed in
``spec.perm_to_features[p]`` (for a residual stream, every block output of the stage). Over the
data (conv channels: every spatial position is an observation) we accumulate, batch by batch,
  n, sum h_A, sum h_B, sum h_A^2, sum h_B^2 and the cross moment sum h_A h_B^T,
never holding the dataset's activations. Then corr_ij = cov(h_A,i, h_B,j) / (std_A,i std_B,j) and
P_p solves max_P <P, corr>, one linear assignment per permutation, all from one pass.
A unit that is zero on every example (a dead ReLU) correlates with nothing, which leaves its
match arbitrary; the same statistics of the pre-activations, added with a small weight
(``TIE_BREAK``), break those ties without moving the matches of live units.
The reported objective is  E_x sum_l ||h_A^l(x) - P_l h_B^l(x)||^2  from the same statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from llfc_core.data import Dataset
from llfc_core.features import capture_features
from llfc_core.permutation import Permutation, PermutationSpec
from llfc_core.progress import Reporter

EPSILON = 1e-12
TIE_BREAK = 1e-3


def _units_last(activation: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> (N * prod(spatial), C): each position is one observation of C units."""
    return activation.movedim(1, -1).reshape(-1, activation.shape[1]).double()


@dataclass
class _Moments:
    count: int
    sum_a: torch.Tensor
    sum_b: torch.Tensor
    sumsq_a: torch.Tensor
    sumsq_b: torch.Tensor
    cross: torch.Tensor

    @classmethod
    def zeros(cls, size: int, device: torch.device) -> _Moments:
        def vector() -> torch.Tensor:
            return torch.zeros(size, dtype=torch.float64, device=device)

        return cls(
            0,
            vector(),
            vector(),
            vector(),
            vector(),
            torch.zeros(size, size, dtype=torch.float64, device=device),
        )

    def add(self, units_a: torch.Tensor, units_b: torch.Tensor) -> None:
        self.count += units_a.shape[0]
        self.sum_a += units_a.sum(0)
        self.sum_b += units_b.sum(0)
        self.sumsq_a += units_a.pow(2).sum(0)
        self.sumsq_b += units_b.pow(2).sum(0)
        self.cross += units_a.T @ units_b

    def correlation(self) -> torch.Tensor:
        mean_a = self.sum_a / self.count
        mean_b = self.sum_b / self.count
        covariance = self.cross / self.count - torch.outer(mean_a, mean_b)
        std_a = (self.sumsq_a / self.count - mean_a.pow(2)).clamp_min(0).sqrt()
        std_b = (self.sumsq_b / self.count - mean_b.pow(2)).clamp_min(0).sqrt()
        return covariance / (torch.outer(std_a, std_b) + EPSILON)

    def squared_distance(self, columns: torch.Tensor) -> float:
        """sum over observations of ||h_A - P h_B||^2 where (P h_B)_i = h_B[columns[i]]."""
        matched_cross = self.cross[torch.arange(columns.numel()), columns.to(self.cross.device)]
        return float(self.sumsq_a.sum() + self.sumsq_b.sum() - 2 * matched_cross.sum())


def activation_matching(
    spec: PermutationSpec,
    model_a: nn.Module,
    model_b: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device,
    reporter: Reporter | None = None,
) -> tuple[Permutation, float, float]:
    """The permutation of B maximising feature correlation with A, and the objective before/after.

    ``dataset`` must already be shaped for the arch; models must be in eval mode on ``device``.
    """
    reporter = reporter or Reporter()
    sites = sorted({name for names in spec.perm_to_features.values() for name in names})
    moments: dict[str, dict[str, _Moments]] = {}
    pre_moments: dict[str, dict[str, _Moments]] = {}
    num_examples = 0
    total_batches = dataset.num_batches(batch_size)
    with (
        torch.inference_mode(),
        capture_features(model_a, relus=sites, pre_activations=True) as seen_a,
        capture_features(model_b, relus=sites, pre_activations=True) as seen_b,
    ):
        for index, (inputs, _) in enumerate(dataset.batches(batch_size)):
            inputs = inputs.to(device)
            model_a(inputs)
            model_b(inputs)
            num_examples += inputs.shape[0]
            for perm_name, site_names in spec.perm_to_features.items():
                for table, seen_a_site, seen_b_site in (
                    (moments, seen_a.activations, seen_b.activations),
                    (pre_moments, seen_a.pre_activations, seen_b.pre_activations),
                ):
                    per_site = table.setdefault(perm_name, {})
                    for site in site_names:
                        units_a = _units_last(seen_a_site[site])
                        units_b = _units_last(seen_b_site[site])
                        if site not in per_site:
                            per_site[site] = _Moments.zeros(units_a.shape[1], device)
                        per_site[site].add(units_a, units_b)
            seen_a.clear()
            seen_b.clear()
            reporter.report((index + 1) / total_batches, "activation matching: feature statistics")

    perm: Permutation = {}
    before = after = 0.0
    for perm_name, per_site in moments.items():
        correlation = torch.stack([site.correlation() for site in per_site.values()]).sum(0)
        pre_correlation = torch.stack(
            [site.correlation() for site in pre_moments[perm_name].values()]
        ).sum(0)
        correlation = correlation + TIE_BREAK * pre_correlation
        _, columns = linear_sum_assignment(np.asarray(correlation.cpu()), maximize=True)
        perm[perm_name] = torch.from_numpy(columns).long()
        identity = torch.arange(columns.size)
        before += sum(site.squared_distance(identity) for site in per_site.values())
        after += sum(site.squared_distance(perm[perm_name]) for site in per_site.values())
    return perm, before / max(num_examples, 1), after / max(num_examples, 1)
