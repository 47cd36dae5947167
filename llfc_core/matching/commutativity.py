"""Commutativity matching: the permutations of B that minimise the poster's Eq. (2) directly.

Objective, with H^l the input of weighted layer l on the data (one column per observation) and
P_l, Q_l the permutations of layer l's output and input axes (the identity where the spec
permutes nothing; composites expanded):

    J(pi) = sum_l ||(W_A^l - P_l W_B^l Q_l^T)(H_A^l - Q_l H_B^l)||_F^2

the numerator of analyze's Condition II at every layer. Weight matching minimises the first
factor, activation matching (roughly) the second; this minimises their product.

Only second moments of the features are needed. With M = W_A - P W_B Q^T, D = H_A - Q H_B and
the Gram matrices G_AA = H_A H_A^T, G_AB = H_A H_B^T, G_BB = H_B H_B^T (one streaming pass, float32
per batch added into float64), ||M D||^2 = tr(M S M^T) with
S = D D^T = G_AA - G_AB Q^T - Q G_AB^T + Q G_BB Q^T. A convolution is its linear map over patches,
exactly: W reshaped to (out, C kh kw), H the unfolded input patches (every position of an
example is an observation), so each input channel owns kh kw consecutive patch entries and Q
acts on them as Q (x) I. A grouped convolution is not one such map; it is left out of J, as
are layers whose input no forward hook sees (MultiheadAttention's out_proj).

One step of the descent (as weight matching's: permutations in a seeded random order, head
orders with their nested permutations as one step) re-chooses one permutation p as R applied on
top of the current iterate (R = I: no change; R^T R = I). p enters J in two ways:

- as P_l, the output of layer l: M = W_A - R W~_B (W~_B: B's weight as currently permuted), and
  ||R W~_B D||^2 does not depend on R, so J_l(R) = const - 2 <R, W_A S W~_B^T> exactly: linear.
- as Q_l, the input of layer l, in both factors. Using R^T R = I, M D = W_A H_A - W_A R H~_B
  - W~_B R^T H_A + W~_B H~_B is affine in R over the permutations, so J_l is a convex quadratic
  of R, not linear. It is linearised at the current iterate (R = I): J_l(R) ~ J_l(I) - 2 <R - I, C>
  with  C = W_A^T M (G~_AB - G~_BB) + (G_AA - G~_AB) M^T W~_B  (from d(M D) = -W_A dR H~_B
  - W~_B dR^T H_A; G~: B's side as currently permuted). By convexity this model never
  overestimates J_l, so its minimiser can overshoot.

The step maximises <R, sum of the C's> (the exact output terms plus the linearised input terms):
one linear assignment. It is accepted only when the exact J over the layers p touches
decreases; otherwise the assignment is solved again with a proximal term lambda <R, I> added,
which penalises every moved unit by lambda (for permutations ||R - I||^2 = 2 (n - tr R)), at
lambda = spread / 64, / 16, / 4 of the cost's spread (at the full spread nothing would move).
A step that no lambda makes decrease J leaves p as it was. J therefore never increases.
A layer with p on both axes (a square map within one residual stream) is linearised on both.

The descent starts from the caller's ``start``; ``match_models`` gives it weight matching's
solution. From the identity the descent stalls in local minima even on B = a shuffled copy of A
(a random digits MLP 64-48-32-10: J from 1.21 to 0.35 per example, not 0; a ResNet-8: 56 to
7.6), where weight matching's solution is the exact answer, J = 0; on trained pairs
benchmarks/matching_methods.py measures both starts. Permutations that touch no modelled layer with
observed input are left as they start, and reported as unobserved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llfc_core.data import Dataset
from llfc_core.features import capture_features, is_transposed_linear
from llfc_core.matching.assignment import AssignmentSolver, maximise_assignment
from llfc_core.matching.weight import RELATIVE_TOLERANCE, descent_steps, solve_step
from llfc_core.permutation import (
    Permutation,
    PermutationSpec,
    expanded_permutation,
    permuted_tensor,
)
from llfc_core.progress import Reporter

PROXIMAL_FRACTIONS = (1 / 64, 1 / 16, 1 / 4)
"""The proximal weights tried, as fractions of the step's cost spread, when the plain
linearised step does not decrease J."""
STATISTICS_SHARE = 0.5
"""Share of the progress bar for the pass over the data; the rest is the descent."""


@dataclass
class _Layer:
    """One weighted layer of J: where its weight's output and input axes are, how many patch
    entries each input unit owns, and the Gram matrices of its input patches."""

    name: str
    key: str
    out_axis: int
    in_axis: int
    kernel: int
    gram_aa: torch.Tensor
    gram_ab: torch.Tensor
    gram_bb: torch.Tensor

    def matrix(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight as an (out, inputs) float64 matrix over patch entries."""
        if self.out_axis == 1:  # stored inputs x outputs
            return weight.double().T
        return weight.double().reshape(weight.shape[0], -1)


def _layer_axes(module: nn.Module) -> tuple[int, int, int] | None:
    """(output axis, input axis, patch entries per input unit) of a layer J models, else None."""
    if is_transposed_linear(module):
        return 1, 0, 1
    if isinstance(module, nn.Linear):
        return 0, 1, 1
    if isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros":
        kernel_h, kernel_w = module.kernel_size
        return 0, 1, kernel_h * kernel_w
    return None


def layer_patch_shape(module: nn.Module) -> tuple[int, int] | None:
    """(entries of one input patch, output units) of a layer J models, None for a module it
    does not: a patch holds the input units times the kernel entries."""
    axes = _layer_axes(module)
    weight = getattr(module, "weight", None)
    if axes is None or not isinstance(weight, torch.Tensor):
        return None
    out_axis, in_axis, kernel = axes
    return int(weight.shape[in_axis]) * kernel, int(weight.shape[out_axis])


def _patches(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The layer's input as (observations, inputs): a conv's unfolded patches, channel-major
    like its flattened weight."""
    if isinstance(module, nn.Conv2d):
        unfolded = F.unfold(
            inputs.contiguous(),
            module.kernel_size,
            dilation=module.dilation,
            padding=module.padding,  # type: ignore[arg-type]
            stride=module.stride,
        )
        return unfolded.transpose(1, 2).reshape(-1, unfolded.shape[1])
    return inputs.reshape(-1, inputs.shape[-1])


def _gram_layers(
    model_a: nn.Module,
    model_b: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device,
    reporter: Reporter,
) -> tuple[list[_Layer], int]:
    """Every modelled layer whose input the forward pass shows, with its Grams over the data,
    and the number of examples."""
    modules = dict(model_a.named_modules())
    axes = {name: _layer_axes(module) for name, module in modules.items()}
    names = [name for name, found in axes.items() if found is not None]
    grams: dict[str, list[torch.Tensor]] = {}
    num_examples = 0
    total_batches = dataset.num_batches(batch_size)
    with (
        torch.inference_mode(),
        capture_features(model_a, layer_inputs=names) as seen_a,
        capture_features(model_b, layer_inputs=names) as seen_b,
    ):
        for index, (inputs, _) in enumerate(dataset.batches(batch_size)):
            inputs = inputs.to(device)
            model_a(inputs)
            model_b(inputs)
            num_examples += inputs.shape[0]
            for name, input_a in seen_a.layer_inputs.items():
                patches_a = _patches(modules[name], input_a).float()
                patches_b = _patches(modules[name], seen_b.layer_inputs[name]).float()
                products = [patches_a.T @ patches_a, patches_a.T @ patches_b]
                products.append(patches_b.T @ patches_b)
                if name not in grams:
                    grams[name] = [product.double() for product in products]
                else:
                    for total, product in zip(grams[name], products, strict=True):
                        total += product
            seen_a.clear()
            seen_b.clear()
            reporter.report((index + 1) / total_batches, "commutativity matching: feature Grams")
    layers = []
    for name, (gram_aa, gram_ab, gram_bb) in grams.items():
        found = axes[name]
        assert found is not None
        out_axis, in_axis, kernel = found
        layers.append(
            _Layer(name, f"{name}.weight", out_axis, in_axis, kernel, gram_aa, gram_ab, gram_bb)
        )
    return layers, num_examples


@dataclass
class _Current:
    """One layer's factors at a permutation: W_A, W~_B, G_AA, G~_AB, G~_BB, M and S."""

    w_a: torch.Tensor
    w_b: torch.Tensor
    gram_aa: torch.Tensor
    gram_ab: torch.Tensor
    gram_bb: torch.Tensor

    def __post_init__(self) -> None:
        self.difference = self.w_a - self.w_b
        self.second_moment = self.gram_aa - self.gram_ab - self.gram_ab.T + self.gram_bb

    @property
    def objective(self) -> float:
        """||M D||^2 = sum of (M S) * M."""
        return float(((self.difference @ self.second_moment) * self.difference).sum())

    def output_cost(self) -> torch.Tensor:
        """W_A S W~_B^T: J_l = const - 2 <R, this> for R on the output axis (exact)."""
        return self.w_a @ self.second_moment @ self.w_b.T

    def input_cost(self) -> torch.Tensor:
        """W_A^T M (G~_AB - G~_BB) + (G_AA - G~_AB) M^T W~_B: J_l's linearisation in R on the
        input axis is J_l(I) - 2 <R - I, this>."""
        return (
            self.w_a.T @ self.difference @ (self.gram_ab - self.gram_bb)
            + (self.gram_aa - self.gram_ab) @ self.difference.T @ self.w_b
        )


def _unit_cost(full: torch.Tensor, offset: int, block: int, units: int) -> torch.Tensor:
    """The (units, units) score of moving whole units of ``block`` entries from ``offset``:
    entry (i, j) sums full[offset + i block + b, offset + j block + b] over b."""
    span = full[offset : offset + units * block, offset : offset + units * block]
    return span.reshape(units, block, units, block).diagonal(dim1=1, dim2=3).sum(-1)


class _Descent:
    """J over the modelled layers, evaluated and linearised at any permutation of B."""

    def __init__(
        self,
        spec: PermutationSpec,
        layers: list[_Layer],
        state_a: Mapping[str, torch.Tensor],
        state_b: Mapping[str, torch.Tensor],
    ) -> None:
        self.spec = spec
        self.layers = {layer.key: layer for layer in layers}
        self.state_b = state_b
        self.w_a = {layer.key: layer.matrix(state_a[layer.key]) for layer in layers}
        self.layers_of = {
            name: sorted({use.key for use in uses if use.key in self.layers})
            for name, uses in spec.perm_to_uses.items()
        }

    def current(self, key: str, expanded: Permutation) -> _Current:
        layer = self.layers[key]
        w_b = layer.matrix(permuted_tensor(self.spec, expanded, key, self.state_b))
        gram_ab, gram_bb = layer.gram_ab, layer.gram_bb
        in_perm = self.spec.axes_to_perm.get(key, ())
        name = in_perm[layer.in_axis] if layer.in_axis < len(in_perm) else None
        if name is not None:
            units = expanded[name].to(gram_ab.device)
            index = (units.unsqueeze(1) * layer.kernel + torch.arange(layer.kernel)).flatten()
            gram_ab, gram_bb = gram_ab[:, index], gram_bb[index][:, index]
        return _Current(self.w_a[key], w_b, layer.gram_aa, gram_ab, gram_bb)

    def objective(self, keys: list[str], expanded: Permutation) -> float:
        return sum(self.current(key, expanded).objective for key in keys)

    def linearised(
        self, step: list[str], sizes: list[int], keys: list[str], expanded: Permutation
    ) -> tuple[float, list[np.ndarray]]:
        """The exact J over ``keys`` at the iterate, and for each of the step's permutations
        (of ``sizes`` units) the summed score of R: one layer's factors held at a time, since a
        residual stream's permutation touches every layer of its stage and each layer's
        factors are several patch-width squares of float64."""
        totals = [torch.zeros(size, size, dtype=torch.float64) for size in sizes]
        objective = 0.0
        for key in keys:
            current = self.current(key, expanded)
            objective += current.objective
            layer = self.layers[key]
            for name, total in zip(step, totals, strict=True):
                for use in self.spec.perm_to_uses[name]:
                    if use.key != key:
                        continue
                    if use.axis == layer.out_axis:
                        full, kernel = current.output_cost(), 1
                    else:
                        full, kernel = current.input_cost(), layer.kernel
                    offset, block = use.offset * kernel, use.block * kernel
                    total += _unit_cost(full, offset, block, total.shape[0]).cpu()
                    del full
            del current
        return objective, [total.numpy() for total in totals]


def _composed(perm: Permutation, step: list[str], moves: list[torch.Tensor]) -> Permutation:
    """``perm`` with each of ``step``'s permutations followed by its relative move."""
    moved = dict(perm)
    for name, move in zip(step, moves, strict=True):
        moved[name] = perm[name][move]
    return moved


def _try_step(
    descent: _Descent,
    step: list[str],
    perm: Permutation,
    solver: AssignmentSolver,
) -> Permutation | None:
    """The step's permutations re-chosen, when some choice lowers the exact J of the layers
    they touch (plain linearised step first, then ever more proximal ones); else None."""
    spec = descent.spec
    keys = sorted({key for name in step for key in descent.layers_of[name]})
    if not keys:
        return None
    expanded = expanded_permutation(spec, perm)
    sizes = [perm[name].numel() for name in step]
    before, costs = descent.linearised(step, sizes, keys, expanded)
    spread = max(float(cost.max() - cost.min()) for cost in costs)
    for fraction in (0.0, *PROXIMAL_FRACTIONS):
        proximal = [cost + fraction * spread * np.eye(cost.shape[0]) for cost in costs]
        moves, _ = solve_step(spec, step, proximal, solver)
        if all(torch.equal(move, torch.arange(move.numel())) for move in moves):
            return None
        candidate = _composed(perm, step, moves)
        after = descent.objective(keys, expanded_permutation(spec, candidate))
        if before - after > RELATIVE_TOLERANCE * max(1.0, abs(before)):
            return candidate
    return None


@dataclass(frozen=True)
class CommutativityMatch:
    """The permutation found, J per example at the identity and along the descent (the start,
    then after each sweep: never increasing), the sweeps made, and the permutations seen by no
    modelled layer (left as they started)."""

    permutation: Permutation
    objective_identity: float
    objective_history: list[float]
    sweeps: int
    unobserved: list[str]


def commutativity_matching(
    spec: PermutationSpec,
    model_a: nn.Module,
    model_b: nn.Module,
    dataset: Dataset,
    start: Permutation,
    *,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
    max_iter: int = 100,
    reporter: Reporter | None = None,
    solver: AssignmentSolver | None = None,
) -> CommutativityMatch:
    """Coordinate descent on J from ``start`` (see the module docstring).

    ``dataset`` must already be shaped for the arch; models in eval mode on ``device``.
    """
    reporter = reporter or Reporter()
    solver = solver or maximise_assignment
    layers, num_examples = _gram_layers(
        model_a,
        model_b,
        dataset,
        batch_size=batch_size,
        device=device,
        reporter=reporter.sub(0.0, STATISTICS_SHARE),
    )
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    descent = _Descent(spec, layers, state_a, state_b)
    every_key = list(descent.layers)
    per_example = 1.0 / max(num_examples, 1)
    identity = {name: torch.arange(indices.numel()) for name, indices in start.items()}
    objective_identity = descent.objective(every_key, expanded_permutation(spec, identity))
    perm = {name: indices.clone() for name, indices in start.items()}
    history = [descent.objective(every_key, expanded_permutation(spec, perm)) * per_example]
    steps = [step for step in descent_steps(spec) if any(descent.layers_of[n] for n in step)]
    generator = torch.Generator().manual_seed(seed)
    sweep_reporter = reporter.sub(STATISTICS_SHARE, 1.0 - STATISTICS_SHARE)
    sweeps = 0
    for sweeps in range(1, max_iter + 1):
        improved = False
        for index in torch.randperm(len(steps), generator=generator).tolist():
            moved = _try_step(descent, steps[index], perm, solver)
            if moved is not None:
                perm, improved = moved, True
            sweep_reporter.check()
        history.append(descent.objective(every_key, expanded_permutation(spec, perm)) * per_example)
        sweep_reporter.report(sweeps / max_iter, f"commutativity matching, sweep {sweeps}")
        if not improved:
            break
    sweep_reporter.report(1.0, f"commutativity matching converged after {sweeps} sweeps")
    unobserved = [name for name in spec.perm_names if not descent.layers_of.get(name)]
    return CommutativityMatch(perm, objective_identity * per_example, history, sweeps, unobserved)
