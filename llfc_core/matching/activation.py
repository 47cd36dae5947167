"""Activation matching (Git Re-Basin): align B's hidden units to A's by feature correlation.

For each permutation p, the units it acts on are observed at the ReLU outputs listed in
``spec.perm_to_features[p]`` (for a residual stream, every block output of the stage). Over the
data (conv channels: every spatial position is an observation) we accumulate, batch by batch,
  n, sum h_A, sum h_B, sum h_A^2, sum h_B^2 and the cross moment sum h_A h_B^T,
never holding the dataset's activations. Then corr_ij = cov(h_A,i, h_B,j) / (std_A,i std_B,j) and
P_p solves max_P <P, corr>, one linear assignment per permutation, all from one pass.
A unit that is constant on every example (a dead ReLU) correlates with nothing, which leaves its
match arbitrary; the correlations of the pre-activations of such units of A and B, added with a
small weight (``TIE_BREAK``), break those ties. Those statistics are kept only for the units
that were constant over the first batch (the only ones that can be constant over all data),
so live units cost nothing extra and their matches are left as their activations decide.
The reported objective is  E_x sum_l ||h_A^l(x) - P_l h_B^l(x)||^2  from the same statistics.

A feature site's units are on axis 1 unless ``spec.feature_axes`` says otherwise (a transformer's
(batch, tokens, units): the last, every token being an observation). A permutation with no feature
site, such as attention's query/key and value dimensions, is observed at the outputs of the layers
that produce it: a use of it on a module's weight along that module's output axis (nn.Linear and
nn.Conv2d: axis 0; Hugging Face's transposed Conv1D: axis 1) covers entries ``offset`` to
``offset + units`` of the module's output units. Nested permutations are solved per head order as
in weight matching (:func:`~llfc_core.matching.assignment.maximise_nested_assignment`: inner
assignments on the correlation blocks of each head pair, an outer one over heads). A permutation
seen nowhere stays the identity, and is reported as such.

Cost: the one forward pass of A and B is the floor; on top of it, one (C, N) x (N, C) product
per site for the cross moment (for the MLP 784-512-512-512-10, 42 % of the forward's FLOPs; for
conv nets a few %). Each batch's moments are float32 reductions and that float32 product, added
into float64 totals: float64 products would take longer than the convolutions they summarise,
and per-batch float32 sums of shifted values (see :class:`_Moments`) keep a relative error typically
near 1e-6, far below what could move an assignment away from a tie. On CPU, conv nets run in
channels_last, where the (N, C, H, W) -> (N H W, C) view of a feature map needs no copy, and
temporaries reuse :class:`~llfc_core.features.Scratch` buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from llfc_core.data import Dataset
from llfc_core.features import Scratch, capture_features
from llfc_core.matching.assignment import maximise_assignment, maximise_nested_assignment
from llfc_core.observations import observed_units
from llfc_core.permutation import Permutation, PermutationSpec, nested_indices, perm_sizes
from llfc_core.progress import Reporter

EPSILON = 1e-12
TIE_BREAK = 1e-3


@dataclass
class _Moments:
    """Moments of the shifted units a - shift_a and b - shift_b over the observations so far.

    Each unit is shifted by its value in the first observation. Plain float32 sums lose a unit's
    spread when its mean dwarfs it (common deep in a random or BatchNorm net); the shifted values
    are of the spread's size, so float32 per-batch sums stay accurate: the relative error of a
    variance grows like 6e-8 (mean - first)^2 / variance, ~1e-6 for a first value 4 standard
    deviations out, ~6e-4 for a unit active on 1 example in 10,000 whose first observation is
    that one. The first value costs no pass over the batch, where the first batch's mean took
    one per unit and side, and a unit equal to it on every observation has ``sumsq`` exactly
    zero (see :meth:`constant_a`). Correlations do not depend on the shift, and the objective is
    recovered exactly from the shifted moments.
    """

    shift_a: torch.Tensor
    shift_b: torch.Tensor
    count: int
    sum_a: torch.Tensor
    sum_b: torch.Tensor
    sumsq_a: torch.Tensor
    sumsq_b: torch.Tensor
    cross: torch.Tensor

    @classmethod
    def shifted_by_first_of(cls, units_a: torch.Tensor, units_b: torch.Tensor) -> _Moments:
        """Empty moments, shifted by the first of these observations (no pass over the batch)."""
        size_a, size_b = units_a.shape[1], units_b.shape[1]

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.float64, device=units_a.device)

        return cls(
            units_a[0].clone(),
            units_b[0].clone(),
            0,
            zeros(size_a),
            zeros(size_b),
            zeros(size_a),
            zeros(size_b),
            zeros(size_a, size_b),
        )

    def add(self, units_a: torch.Tensor, units_b: torch.Tensor, scratch: Scratch) -> None:
        """Add one batch of observations (rows) of the units (columns); temporaries in
        ``scratch``'s slots "a", "b" and "square"."""
        shifted_a = torch.sub(units_a, self.shift_a, out=scratch.like(units_a, "a"))
        shifted_b = torch.sub(units_b, self.shift_b, out=scratch.like(units_b, "b"))
        self.count += units_a.shape[0]
        self.sum_a += shifted_a.sum(0)
        self.sum_b += shifted_b.sum(0)
        for sums, shifted in ((self.sumsq_a, shifted_a), (self.sumsq_b, shifted_b)):
            sums += torch.mul(shifted, shifted, out=scratch.like(shifted, "square")).sum(0)
        self.cross += shifted_a.T @ shifted_b

    def constant_a(self) -> torch.Tensor:
        """Which units of A were the same on every observation so far."""
        return self.sumsq_a == 0

    def constant_b(self) -> torch.Tensor:
        return self.sumsq_b == 0

    def correlation(self) -> torch.Tensor:
        mean_a = self.sum_a / self.count
        mean_b = self.sum_b / self.count
        covariance = self.cross / self.count - torch.outer(mean_a, mean_b)
        std_a = (self.sumsq_a / self.count - mean_a.pow(2)).clamp_min(0).sqrt()
        std_b = (self.sumsq_b / self.count - mean_b.pow(2)).clamp_min(0).sqrt()
        return covariance / (torch.outer(std_a, std_b) + EPSILON)

    def squared_distance(self, columns: torch.Tensor) -> float:
        """sum over observations of ||h_A - P h_B||^2 where (P h_B)_i = h_B[columns[i]].

        With a = a' + s_a, b = b' + s_b and d_i = s_a[i] - s_b[c_i], the sum over observations of
        (a_i - b_{c_i})^2 is  sum a'_i^2 + sum b'_{c_i}^2 - 2 sum a'_i b'_{c_i}
        + 2 d_i (sum a'_i - sum b'_{c_i}) + n d_i^2.
        """
        columns = columns.to(self.cross.device)
        rows = torch.arange(columns.numel(), device=self.cross.device)
        shift_difference = self.shift_a.double() - self.shift_b.double()[columns]
        per_unit = (
            self.sumsq_a
            + self.sumsq_b[columns]
            - 2 * self.cross[rows, columns]
            + 2 * shift_difference * (self.sum_a - self.sum_b[columns])
            + self.count * shift_difference.square()
        )
        return float(per_unit.sum())


@dataclass
class _ConstantUnitTieBreak:
    """Pre-activation moments of the units of A and of B (``units_a``, ``units_b``: indices)
    that were constant over the first batch: only those can be constant over all data."""

    units_a: torch.Tensor
    units_b: torch.Tensor
    pre_moments: _Moments | None = None

    @classmethod
    def after_first_batch(cls, moments: _Moments) -> _ConstantUnitTieBreak:
        return cls(
            torch.nonzero(moments.constant_a()).flatten(),
            torch.nonzero(moments.constant_b()).flatten(),
        )

    def add(self, pre_a: torch.Tensor, pre_b: torch.Tensor, scratch: Scratch) -> None:
        if self.units_a.numel() == 0 or self.units_b.numel() == 0:
            return
        pre_a, pre_b = pre_a[:, self.units_a], pre_b[:, self.units_b]
        if self.pre_moments is None:
            self.pre_moments = _Moments.shifted_by_first_of(pre_a, pre_b)
        self.pre_moments.add(pre_a, pre_b, scratch)

    def add_to(self, correlation: torch.Tensor, moments: _Moments) -> None:
        """Add ``TIE_BREAK`` times the pre-activation correlations of the units that were
        constant over all data (``moments``: their activations'), in A and in B, to their
        entries of ``correlation``."""
        if self.pre_moments is None:
            return
        constant_a = moments.constant_a()[self.units_a]
        constant_b = moments.constant_b()[self.units_b]
        block = self.pre_moments.correlation()[constant_a][:, constant_b]
        rows, columns = self.units_a[constant_a], self.units_b[constant_b]
        correlation[rows.unsqueeze(1), columns.unsqueeze(0)] += TIE_BREAK * block.to(
            correlation.dtype
        )


def _solve(
    spec: PermutationSpec, correlations: dict[str, torch.Tensor], sizes: dict[str, int]
) -> tuple[Permutation, list[str]]:
    """The permutation maximising the summed correlations, and the permutations seen nowhere
    (left as the identity; for a nested one, its entries within each head)."""
    perm: Permutation = {}
    unobserved = [name for name in spec.perm_names if name not in correlations]
    for name, correlation in correlations.items():
        if name not in spec.nested:
            perm[name] = torch.from_numpy(maximise_assignment(np.asarray(correlation))).long()
    for members in spec.head_orders.values():
        seen = [name for name in members if name in correlations]
        if not seen:
            continue
        nesting = spec.nested[seen[0]]
        order, withins, _ = maximise_nested_assignment(
            [np.asarray(correlations[name]) for name in seen],
            nesting.heads,
            nesting.head_size,
            maximise_assignment,
        )
        order_indices = torch.from_numpy(order).long()
        unmoved = torch.arange(nesting.head_size).expand(nesting.heads, -1)
        for name in members:
            within = torch.from_numpy(withins[seen.index(name)]) if name in seen else unmoved
            perm[name] = nested_indices(order_indices, within.long())
    for name in spec.perm_names:
        perm.setdefault(name, torch.arange(sizes[name]))
    return perm, unobserved


def activation_matching(
    spec: PermutationSpec,
    model_a: nn.Module,
    model_b: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device,
    reporter: Reporter | None = None,
) -> tuple[Permutation, float, float, list[str]]:
    """The permutation of B maximising feature correlation with A, the objective before/after,
    and the permutations that no feature or layer output showed (left as the identity).

    ``dataset`` must already be shaped for the arch; models must be in eval mode on ``device``.
    On CPU, conv models are converted to channels_last in place (their function is unchanged).
    """
    reporter = reporter or Reporter()
    channels_last = device.type == "cpu" and any(
        isinstance(module, nn.Conv2d) for module in model_a.modules()
    )
    if channels_last:
        model_a.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        model_b.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    observations = observed_units(spec, model_a)
    modules = sorted({seen.module for seen_at in observations.values() for seen in seen_at})
    moments: dict[str, dict[str, _Moments]] = {}
    tie_breaks: dict[str, dict[str, _ConstantUnitTieBreak]] = {}
    scratch = Scratch()
    num_examples = 0
    total_batches = dataset.num_batches(batch_size)
    with (
        torch.inference_mode(),
        capture_features(model_a, relus=modules, pre_activations=True) as seen_a,
        capture_features(model_b, relus=modules, pre_activations=True) as seen_b,
    ):
        for index, (inputs, _) in enumerate(dataset.batches(batch_size)):
            inputs = inputs.to(device)
            if channels_last and inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            model_a(inputs)
            model_b(inputs)
            num_examples += inputs.shape[0]
            for perm_name, seen_at in observations.items():
                per_site = moments.setdefault(perm_name, {})
                ties_per_site = tie_breaks.setdefault(perm_name, {})
                for seen in seen_at:
                    site = seen.label
                    units_a = seen.units(seen_a.activations[seen.module])
                    units_b = seen.units(seen_b.activations[seen.module])
                    first_batch = site not in per_site
                    if first_batch:
                        per_site[site] = _Moments.shifted_by_first_of(units_a, units_b)
                    per_site[site].add(units_a, units_b, scratch)
                    if not seen.feature_site:
                        continue
                    if first_batch:
                        ties_per_site[site] = _ConstantUnitTieBreak.after_first_batch(
                            per_site[site]
                        )
                    ties_per_site[site].add(
                        seen.units(seen_a.pre_activations[seen.module]),
                        seen.units(seen_b.pre_activations[seen.module]),
                        scratch,
                    )
            seen_a.clear()
            seen_b.clear()
            reporter.report((index + 1) / total_batches, "activation matching: feature statistics")

    correlations = {}
    for perm_name, per_site in moments.items():
        correlation = torch.stack([site.correlation() for site in per_site.values()]).sum(0)
        for site_name, tie_break in tie_breaks[perm_name].items():
            tie_break.add_to(correlation, per_site[site_name])
        correlations[perm_name] = correlation.cpu()
    sizes = perm_sizes(spec, model_a.state_dict())
    perm, unobserved = _solve(spec, correlations, sizes)
    before = after = 0.0
    for perm_name, per_site in moments.items():
        identity = torch.arange(perm[perm_name].numel())
        before += sum(site.squared_distance(identity) for site in per_site.values())
        after += sum(site.squared_distance(perm[perm_name]) for site in per_site.values())
    return perm, before / max(num_examples, 1), after / max(num_examples, 1), unobserved
