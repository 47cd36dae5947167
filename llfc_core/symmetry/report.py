"""What the derived symmetries of an arch are, as JSON: the inspect report and the summary that
match and analyze results carry, with the proof's figure.

The report lists every permutation group (its size and the tensor axes it acts on; for
attention, its heads, their size and the head order it shares), every unit axis left unpermuted
and the op that stopped it, and the feature layers LLFC measures. The proof runs on randomly
initialised weights (BatchNorm statistics randomised too, so that an axis the spec forgot
changes the outputs) and random inputs; jobs prove again on the job's own weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llfc_core.archs.base import Architecture
from llfc_core.features import ResidualTap, feature_site_names, weighted_layer_names
from llfc_core.observations import observed_units
from llfc_core.symmetry.derive import DerivedSymmetry
from llfc_core.symmetry.proof import PROOF_TOLERANCE, check_proof

PROOF_EXAMPLES = 4
MAX_LISTED_UNPERMUTED = 100
"""Unpermuted axes listed in a job result's summary (the inspect report lists all)."""


def randomised_model(arch: Architecture, seed: int) -> nn.Module:
    """The arch with random weights on the CPU, in eval mode, with BatchNorm affine parameters
    and statistics that differ per channel, and no tensor left all zeros: a zero-initialised
    classifier (torchvision's ViT) or bias would make every output, or a forgotten axis, zero,
    and the proof vacuous."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = arch.build().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.numel() and not parameter.any():
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            size = module.running_mean.shape
            module.running_mean.copy_(torch.randn(size, generator=generator))
            if module.running_var is not None:
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            if module.affine:
                module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.data.copy_(torch.randn(size, generator=generator))
    return model


def prove_arch(arch: Architecture, seed: int = 0) -> dict[str, Any]:
    """The proof of the arch's spec on random weights and inputs, as JSON; raises
    :class:`~llfc_core.errors.SymmetryProofError` naming the permutation that broke it."""
    model = randomised_model(arch, seed)
    generator = torch.Generator().manual_seed(seed)
    inputs = arch.random_inputs(PROOF_EXAMPLES, generator)
    change = check_proof(model, arch.permutation_spec(), inputs, seed=seed)
    return proof_json(change, PROOF_EXAMPLES, "random")


def proof_json(change: float, examples: int, inputs: str) -> dict[str, Any]:
    return {
        "relative_change": change,
        "tolerance": PROOF_TOLERANCE,
        "passed": change <= PROOF_TOLERANCE,
        "examples": examples,
        "inputs": inputs,
    }


def symmetry_summary(derived: DerivedSymmetry) -> dict[str, Any]:
    """Counts and the unpermuted axes, as match and analyze results carry them."""
    unpermuted = _unpermuted(derived)
    return {
        "permutations": len(derived.spec.perm_names),
        "permuted_units": sum(derived.sizes.values()),
        "composite_axes": len(derived.spec.composites),
        "head_orders": len(derived.spec.head_orders),
        "unpermuted_axes": len(unpermuted),
        "unpermuted": unpermuted[:MAX_LISTED_UNPERMUTED],
    }


def inspect_report(arch: Architecture, proof: dict[str, Any] | None) -> dict[str, Any]:
    """The whole report of ``arch``: what POST /v1/archs/inspect answers."""
    derived = arch.symmetry()
    spec = derived.spec
    sizes = derived.sizes
    with torch.device("meta"):
        model = arch.build()
    modules = dict(model.named_modules())
    observed = observed_units(spec, model)
    permutations = []
    for name in spec.perm_names:
        axes = []
        for use in spec.perm_to_uses[name]:
            axis: dict[str, Any] = {"tensor": use.key, "axis": use.axis}
            if use.units is not None:
                axis.update(offset=use.offset, block=use.block)
            axes.append(axis)
        entry: dict[str, Any] = {
            "name": name,
            "size": sizes[name],
            "observed_at": [seen.label for seen in observed.get(name, [])],
            "axes": axes,
        }
        nesting = spec.nested.get(name)
        if nesting is not None:
            entry.update(
                heads=nesting.heads, head_size=nesting.head_size, head_order=nesting.head_order
            )
        permutations.append(entry)
    return {
        "arch": arch.to_json(),
        "num_params": arch.num_params(),
        "input_shape": list(arch.input_shape),
        "num_classes": arch.num_classes,
        "has_batch_norm": arch.has_batch_norm,
        "permutations": permutations,
        "unpermuted": _unpermuted(derived),
        "feature_layers": [
            *(
                {
                    "name": name,
                    "kind": "residual" if isinstance(modules[name], ResidualTap) else "activation",
                }
                for name in feature_site_names(model)
            ),
            {"name": "logits", "kind": "logits"},
        ],
        "condition_ii_layers": weighted_layer_names(model),
        "proof": proof,
    }


def _unpermuted(derived: DerivedSymmetry) -> list[dict[str, Any]]:
    return [
        {"tensor": axis.key, "axis": axis.axis, "reason": axis.reason}
        for axis in derived.unpermuted
    ]
