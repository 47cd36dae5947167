"""What a job will cost before it runs: its peak memory, and the bytes its checkpoints take.

Both are read from the arch alone, on the meta device (nothing is allocated), so a service can
refuse a job at submission instead of watching a worker run out of memory.

Peak memory is the sum of what the engine holds at its busiest moment, in float32 (4 bytes) and
float64 (8 bytes), with N the batch size, W_l the values one example has at module l, C_p the
units of permutation p and P the bytes of one model's state:

* weight matching (:mod:`llfc_core.matching.weight`): A and B, their axis-first copies and B
  permuted (5P); every term's C_p x C_p float32 product, kept between sweeps; one float64 cost
  matrix, its negation and the solver's own copy.
* activation matching (:mod:`llfc_core.matching.activation`): A and B as states and as models,
  and B permuted (5P); the pre-activation and output of every feature site (an activation or
  a residual tap) of both models for one batch (2 x 2 x N x sum W_site x 4), three scratch
  buffers and the forward's running tensors; a float64 cross moment C_p x C_p per observed
  site, and at the solve the stacked correlations of one permutation, their sum, three
  temporaries of one correlation and the solver's two copies.
* commutativity matching (:mod:`llfc_core.matching.commutativity`): weight matching's start,
  then both models' inputs of every modelled layer for one batch and one layer's patches
  (2 x N x (sum inputs + widest patches) x 4), three float64 Grams of patch width squared per
  layer, float64 copies of A's and permuted B's weights and a step's width x width temporaries.
* STE matching (:mod:`llfc_core.matching.ste`): weight matching at every step, beside the
  proxy, its gradient, Adam's moments, B permuted, the straight-through and midpoint
  parameters (7P) and a training step's saved outputs, as training counts them.
* analysis (:mod:`llfc_core.analysis`): the matching above when asked for, then A and B as
  given, validated and as models, B matched, one interpolated state on its way to a model (8P),
  theta_alpha (one model per interior alpha when the engine keeps them, as it always does under
  REPAIR, else one work model), A's feature sites' pre-activations and outputs for one batch, and
  the running tensors of the model being compared.
* interpolation: A, B, the mix and the model re-estimating BatchNorm statistics, and one batch's
  running tensors; under REPAIR also the model of A or B whose statistics are being measured.
  A match job's repaired midpoint costs the same, from A and B permuted.
* training: every trained mode's state, the model in training with its gradients and momentum
  (3P), autograd's saved output of every module for one batch, and as much again for its
  gradients at the widest module.
* attention: the token x token scores of every attention (heads x queries x keys per example)
  are no module's output. Training keeps ``ATTENTION_TRAINING_COPIES`` of every attention's
  scores for one batch (a GPT-2 of 2 blocks of 4 heads at 1,024 tokens, batch 32, measured
  4.0 GiB against 1.07 GB of scores); the other jobs hold one attention's scores at a time,
  twice, where the kernel materialises them.

The dataset is not counted: its size is bounded by ``max_examples`` and its own upload checks.
``tests/core/test_footprint.py`` holds these estimates against measured peaks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from llfc_core.analysis.pair_metrics import keeps_model_per_alpha
from llfc_core.archs.base import Architecture
from llfc_core.errors import JobTooLargeError
from llfc_core.features import ResidualTap, is_activation_module
from llfc_core.graph_lock import GRAPH_LOCK
from llfc_core.matching.commutativity import layer_patch_shape
from llfc_core.permutation import perm_sizes

FLOAT32 = 4
FLOAT64 = 8
RUNNING_TENSORS = 2
"""A forward pass holds a module's input and its output at once."""
SCRATCH_SLOTS = 3
"""Activation matching's temporaries of one observed site (``Scratch`` slots a, b, square)."""
SOLVE_TEMPORARIES = 6
"""Float64 C x C matrices of one solve besides the stacked correlations: their sum, three
temporaries of one correlation, the negated copy we hand ``lapjv`` and the one it makes."""
ATTENTION_TRAINING_COPIES = 4
"""Copies of every attention's scores a training step holds: the scores, their softmax (with
its dropout mask) kept for backward, and their gradients (see the module docstring)."""
WEIGHT_SOLVE_MATRICES = 3
"""Float64 C x C matrices of one weight-matching solve: the summed cost, its negation, and the
copy ``lapjv`` makes."""
COMMUTATIVITY_GRAMS = 3
"""G_AA, G_AB and G_BB of every modelled layer."""
COMMUTATIVITY_STEP_MATRICES = 8
"""A step's width x width float64 temporaries: S, B's Grams as permuted, M S, cost products,
of one layer at a time (``_Descent.linearised``)."""
STE_STATES = 7
"""STE's copies of the learned state: proxy, its gradient, Adam's two moments, B permuted, the
straight-through parameters and the midpoint's."""
SAFETENSORS_ENTRY_FIELDS = '{"dtype":"F32","shape":[],"data_offsets":[,]},'
"""The fixed characters of one tensor's entry in a safetensors header (see
:func:`stored_checkpoint_bytes`)."""
SAFETENSORS_METADATA = '{"__metadata__":{"format":"pt"},}'


@dataclass(frozen=True)
class ArchShapes:
    """What one example costs in each module of an arch."""

    state_bytes: int
    module_values: dict[str, int]
    """Values one example has at the output of each leaf module (and ``""``: the input)."""
    site_values: dict[str, int]
    """Values one example has at each feature site's output."""
    num_params: int
    state_shapes: dict[str, torch.Size]
    attention_values: tuple[int, ...] = ()
    """Values one example has in each attention's token x token scores, in forward order."""
    layer_patches: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """Per layer commutativity matching models (Linear, Conv2d, Conv1D): the values of its
    input, its patch width (a conv's input channels x kernel entries) and its patches, for one
    example."""

    @property
    def widest(self) -> int:
        return max(self.module_values.values())

    @property
    def all_site_values(self) -> int:
        return sum(self.site_values.values())

    @property
    def all_module_values(self) -> int:
        return sum(self.module_values.values())


@dataclass(frozen=True)
class PermutationShapes:
    """The sizes matching works with: read from the arch's permutation spec, which only a
    matching job needs derived."""

    perm_sizes: dict[str, int]
    weight_terms: dict[str, int]
    """Per permutation, the (tensor, axis) products of weight matching."""
    observed_sites: dict[str, tuple[str, ...]]
    """Per permutation, the feature sites activation matching observes."""


class _AttentionScores(TorchFunctionMode):
    """Notes the size of every attention's scores as the model runs: those of
    ``scaled_dot_product_attention`` (batch x heads x queries x keys, never a tensor of the
    graph) and those of a product of queries and keys spelled as ``matmul`` (rank 4 and up)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[int] = []

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            query = args[0] if args else kwargs["query"]
            key = args[1] if len(args) > 1 else kwargs["key"]
            self.values.append(query.shape[1:-1].numel() * key.shape[-2])
        elif func in MATRIX_PRODUCTS and isinstance(output, torch.Tensor) and output.dim() >= 4:
            self.values.append(output[0].numel())
        return output


MATRIX_PRODUCTS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__}


def arch_shapes(arch: Architecture) -> ArchShapes:
    """Run one example through ``arch`` on the meta device and note every module's output size."""
    with torch.device("meta"):
        model = arch.build().eval()
        example = arch.random_inputs(1)
    module_values: dict[str, int] = {"": example.numel()}
    site_values: dict[str, int] = {}
    layer_patches: dict[str, tuple[int, int, int]] = {}
    leaves = [
        (name, module)
        for name, module in model.named_modules()
        if next(module.children(), None) is None
    ]
    names = {id(module): name for name, module in leaves}

    def note(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        name = names[id(module)]
        module_values[name] = output.numel()
        patch = layer_patch_shape(module)
        if patch is not None:
            width, units = patch
            layer_patches[name] = (inputs[0].numel(), width, output.numel() // units)
        if is_activation_module(module) or isinstance(module, ResidualTap):
            site_values[name] = output.numel()

    handles = [module.register_forward_hook(note) for _, module in leaves]
    scores = _AttentionScores()
    with torch.no_grad(), GRAPH_LOCK:
        # A model traced per input shape traces this one on its first call, running its ops
        # on meta tensors besides: the second call is the model's own.
        model(example)
        with scores:
            model(example)
    for handle in handles:
        handle.remove()
    state = model.state_dict()
    return ArchShapes(
        state_bytes=sum(value.numel() * value.element_size() for value in state.values()),
        module_values=module_values,
        site_values=site_values,
        num_params=sum(parameter.numel() for parameter in model.parameters()),
        state_shapes={key: value.shape for key, value in state.items()},
        attention_values=tuple(scores.values),
        layer_patches=layer_patches,
    )


def permutation_shapes(arch: Architecture, shapes: ArchShapes) -> PermutationShapes:
    """The permutation sizes of ``arch``'s spec (derived here, if not yet)."""
    spec = arch.permutation_spec()
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.state_shapes.items()}
    return PermutationShapes(
        perm_sizes=perm_sizes(spec, state),
        weight_terms={
            perm: sum(1 for key, _ in axes if key not in spec.statistics_keys)
            for perm, axes in spec.perm_to_axes.items()
        },
        observed_sites=dict(spec.perm_to_features),
    )


@dataclass(frozen=True)
class MemoryEstimate:
    """A job's peak memory in bytes, by what holds it."""

    models: int
    batch: int
    """Tensors of one batch: activations, autograd's saved outputs, scratch buffers."""
    matching: int
    """Matrices of size width x width: weight-matching products, correlations, cost matrices."""

    @property
    def total(self) -> int:
        return self.models + self.batch + self.matching

    def refuse_above(self, limit_bytes: int) -> None:
        """Raise :class:`JobTooLargeError` when the peak passes ``limit_bytes``, saying what
        to lower: the largest part first."""
        if self.total <= limit_bytes:
            return
        largest = max(
            ("batch", self.batch),
            ("matching", self.matching),
            ("models", self.models),
            key=lambda part: part[1],
        )[0]
        advice = {
            "batch": f"lower 'batch_size' (activations of one batch take {self.batch:,} bytes"
            "; a transformer's attention grows with the square of its 'input_shape' sequence "
            "length, which a shorter one cuts)",
            "matching": "use narrower layers or weight matching (the width x width "
            f"matching matrices take {self.matching:,} bytes)",
            "models": f"use a smaller arch or fewer models (the models take {self.models:,} bytes)",
        }[largest]
        raise JobTooLargeError(
            f"This job would need about {self.total:,} bytes of memory, more than the "
            f"{limit_bytes:,} bytes a job may use on this service; {advice}."
        )


def _forward_batch(shapes: ArchShapes, batch_size: int) -> int:
    """A forward pass's running tensors, and one attention's scores (twice: with their
    softmax) where the kernel materialises them."""
    attention = max(shapes.attention_values, default=0)
    return (RUNNING_TENSORS * shapes.widest + 2 * attention) * batch_size * FLOAT32


def _matching(
    arch: Architecture, shapes: ArchShapes, method: str, batch_size: int
) -> MemoryEstimate:
    """The matching's memory beside A and B's states (B permuted included)."""
    state_bytes = shapes.state_bytes
    permutations = permutation_shapes(arch, shapes)
    if method in ("weight", "commutativity", "ste"):
        products = sum(
            permutations.weight_terms[perm] * size * size * FLOAT32
            for perm, size in permutations.perm_sizes.items()
        )
        solve = (
            WEIGHT_SOLVE_MATRICES * max(permutations.perm_sizes.values(), default=0) ** 2 * FLOAT64
        )
        weight = MemoryEstimate(models=3 * state_bytes, batch=0, matching=products + solve)
        if method == "weight":
            return weight
        # Weight matching runs first (commutativity) or at every step (STE), its matrices
        # freed between runs; STE holds its own tensors meanwhile.
        if method == "commutativity":
            descent = _commutativity(shapes, batch_size)
            return MemoryEstimate(
                models=weight.models,
                batch=descent.batch,
                matching=max(weight.matching, descent.matching),
            )
        ste = _ste(shapes, batch_size)
        return MemoryEstimate(
            models=weight.models + ste.models, batch=ste.batch, matching=weight.matching
        )
    observed = [site for sites in permutations.observed_sites.values() for site in sites]
    captured = 2 * 2 * sum(shapes.site_values[site] for site in observed)
    scratch = SCRATCH_SLOTS * max((shapes.site_values[site] for site in observed), default=0)
    batch = (captured + scratch) * batch_size * FLOAT32 + _forward_batch(shapes, batch_size)
    moments = sum(
        len(sites) * permutations.perm_sizes[perm] ** 2 * FLOAT64
        for perm, sites in permutations.observed_sites.items()
    )
    solve = max(
        (
            (len(sites) + SOLVE_TEMPORARIES) * permutations.perm_sizes[perm] ** 2 * FLOAT64
            for perm, sites in permutations.observed_sites.items()
        ),
        default=0,
    )
    return MemoryEstimate(models=3 * state_bytes, batch=batch, matching=moments + solve)


def _commutativity(shapes: ArchShapes, batch_size: int) -> MemoryEstimate:
    """Commutativity matching's memory after weight matching's start: both models' layer
    inputs and one layer's patches, the Grams, and one step's temporaries."""
    patches = shapes.layer_patches.values()
    inputs = sum(values for values, _, _ in patches)
    widest_patches = max((width * count for _, width, count in patches), default=0)
    batch = 2 * (inputs + widest_patches) * batch_size * FLOAT32 + _forward_batch(
        shapes, batch_size
    )
    grams = COMMUTATIVITY_GRAMS * sum(width * width for _, width, _ in patches) * FLOAT64
    widest = max((width for _, width, _ in patches), default=0)
    # float64 copies of A's weights and B's permuted, and a step's width x width temporaries
    step = 2 * shapes.num_params * FLOAT64 + COMMUTATIVITY_STEP_MATRICES * widest**2 * FLOAT64
    return MemoryEstimate(models=0, batch=batch, matching=grams + step)


def _ste(shapes: ArchShapes, batch_size: int) -> MemoryEstimate:
    """STE's memory beside A and B: the proxy with its gradient and Adam's two moments, B
    permuted, the straight-through and midpoint parameters, a training step's saved outputs."""
    saved = shapes.all_module_values * batch_size * FLOAT32
    saved += ATTENTION_TRAINING_COPIES * sum(shapes.attention_values) * batch_size * FLOAT32
    return MemoryEstimate(
        models=STE_STATES * shapes.state_bytes,
        batch=saved + _forward_batch(shapes, batch_size),
        matching=0,
    )


def match_memory(
    arch: Architecture, method: str, batch_size: int, repair: str = "none"
) -> MemoryEstimate:
    """Peak memory of ``match_models`` with ``method`` (one of
    :data:`~llfc_core.params.MATCH_METHODS`), then of the midpoint of A and B permuted,
    repaired by ``repair``, when that is not 'none'."""
    shapes = arch_shapes(arch)
    matching = _matching(arch, shapes, method, batch_size)
    estimate = MemoryEstimate(
        models=matching.models + 2 * shapes.state_bytes,
        batch=matching.batch,
        matching=matching.matching,
    )
    if repair == "none":
        return estimate
    # The midpoint is made once matching has ended (its matrices freed), from A and B permuted
    # as an interpolation makes it from A and B.
    midpoint = interpolation_memory(arch, batch_size, True, repair)
    return max(estimate, midpoint, key=lambda part: part.total)


def interpolation_memory(
    arch: Architecture, batch_size: int, with_data: bool, repair: str = "reset"
) -> MemoryEstimate:
    """Peak memory of ``interpolate_checkpoint`` (``with_data``: repaired by ``repair`` on it).

    REPAIR measures A's and B's statistics on models of their own, one at a time, beside the
    mixture's model: one state more than a BatchNorm reset."""
    shapes = arch_shapes(arch)
    batch = _forward_batch(shapes, batch_size) if with_data else 0
    models = 5 if with_data and repair == "repair" else 4
    return MemoryEstimate(models=models * shapes.state_bytes, batch=batch, matching=0)


def analysis_memory(
    arch: Architecture,
    batch_size: int,
    match: str,
    alphas: Sequence[float],
    repair: str | None = None,
) -> MemoryEstimate:
    """Peak memory of ``analyze_pair`` with matching ``match``, every alpha in ``alphas`` and
    theta_alpha measured under ``repair`` (the first of a list; None: the arch's default).

    The other repairs of a list are measured afterwards, one theta_alpha at a time beside A and
    B: less than the measuring pass holds."""
    shapes = arch_shapes(arch)
    state_bytes = shapes.state_bytes
    interior = [alpha for alpha in set(alphas) if 0.0 < alpha < 1.0]
    keeps_models = keeps_model_per_alpha(
        len(interior), shapes.num_params, batch_size * shapes.all_site_values, repair or "none"
    )
    path = len(interior) * state_bytes if keeps_models else state_bytes
    measure = MemoryEstimate(
        models=8 * state_bytes + path,
        batch=2 * shapes.all_site_values * batch_size * FLOAT32
        + 2 * _forward_batch(shapes, batch_size),
        matching=0,
    )
    if match == "none":
        return measure
    matching = _matching(arch, shapes, match, batch_size)
    # Matching ends (its matrices are freed) before the measuring starts.
    return max(
        measure,
        MemoryEstimate(
            models=matching.models + 2 * state_bytes,
            batch=matching.batch,
            matching=matching.matching,
        ),
        key=lambda estimate: estimate.total,
    )


def sweep_memory(
    arch: Architecture,
    batch_size: int,
    match: str,
    alphas: Sequence[float],
    num_models: int,
    repair: str | None = None,
) -> MemoryEstimate:
    """Peak memory of ``analyze_sweep`` of ``num_models`` models: one pair's analysis (under
    ``repair``, as :func:`analysis_memory`), with every model's state dict and built endpoint
    held for the pairs it is in."""
    pair = analysis_memory(arch, batch_size, match, alphas, repair)
    kept = 2 * num_models * arch_shapes(arch).state_bytes
    return replace(pair, models=pair.models + kept)


def merge_memory(
    arch: Architecture, method: str, batch_size: int, num_models: int
) -> MemoryEstimate:
    """Peak memory of ``merge_many`` of ``num_models`` models with ``method``: every input and its
    permuted copy, the mean of the others and the average, weight matching's matrices (one
    model onto that mean at a time), a batch through every model (the repair and the fit run
    them all), and for ``feature_average`` one layer's normal equations (the widest patch
    width, squared, in float64, with the targets' products)."""
    shapes = arch_shapes(arch)
    matching = _matching(arch, shapes, "weight", batch_size).matching
    batch = (num_models + 1) * _forward_batch(shapes, batch_size)
    if method == "feature_average":
        # Per layer: X X^T over patches (with a column of ones) and T X^T for its output units.
        normal_equations = max(
            (
                (width + 1) * (width + 1 + shapes.module_values[name] // patches) * FLOAT64
                for name, (_, width, patches) in shapes.layer_patches.items()
            ),
            default=0,
        )
        unfolded = max(
            (width * patches for _, width, patches in shapes.layer_patches.values()), default=0
        )
        matching = max(matching, normal_equations)
        batch += 2 * unfolded * batch_size * FLOAT32
    # 2N + 8 states: measured peaks of 3-round merges of 2 to 5 MLPs 64-2048-2048-10 (342 to
    # 563 MB) varied with the order MergeMany drew and with the allocator by up to 40% at one N;
    # this bound sits at 0.9 to 1.25 of them.
    return MemoryEstimate(
        models=(2 * num_models + 8) * shapes.state_bytes, batch=batch, matching=matching
    )


def training_memory(arch: Architecture, batch_size: int, num_modes: int) -> MemoryEstimate:
    """Peak memory of ``train_modes`` for ``num_modes`` modes."""
    shapes = arch_shapes(arch)
    saved = shapes.all_module_values * batch_size * FLOAT32
    saved += ATTENTION_TRAINING_COPIES * sum(shapes.attention_values) * batch_size * FLOAT32
    return MemoryEstimate(
        models=(num_modes + 3) * shapes.state_bytes,
        batch=saved + _forward_batch(shapes, batch_size),
        matching=0,
    )


def stored_checkpoint_bytes(arch: Architecture) -> int:
    """An upper bound on the size of one checkpoint of ``arch`` as the service stores it
    (safetensors): 8 bytes of header length, the JSON header padded to 8 bytes, the tensors.

    Each header entry is bounded with both data offsets as long as the largest one; the
    metadata is the ``{"format": "pt"}`` that ``save_safetensors`` writes.
    """
    with torch.device("meta"):
        state = arch.build().state_dict()
    data: int = sum(value.numel() * value.element_size() for value in state.values())
    offset_digits = len(str(data))
    header = len(SAFETENSORS_METADATA)
    for key, value in state.items():
        shape = ",".join(str(size) for size in value.shape)
        header += len(SAFETENSORS_ENTRY_FIELDS) + len(json.dumps(key)) + len(shape)
        header += 2 * offset_digits
    padded_header = header + 7
    return 8 + padded_header + data
