"""Inspecting an arch: its derived permutation groups, what stays in place and why, and the
proof, computed in the API process.

The proof builds the model with random weights on the CPU and runs a few examples through it,
so it is bounded twice: only archs whose proof is estimated to fit ``inspect_proof_max_bytes``
(three copies of the weights, every module's output for each example) are proved here (every
job proves its own spec anyway), and one proof runs at a time per API process, so a burst of
requests cannot hold many models in memory at once.
"""

from __future__ import annotations

import threading
from typing import Any

from llfc_core.archs import Architecture, parse_arch
from llfc_core.footprint import arch_shapes
from llfc_core.symmetry.proof import PROOF_TOLERANCE
from llfc_core.symmetry.report import PROOF_EXAMPLES, inspect_report, prove_arch
from service.core.config import Settings
from service.errors import ServiceBusyError

PROOF_WAIT_SECONDS = 30.0
FLOAT32_BYTES = 4
_one_proof_at_a_time = threading.Lock()


def inspect_arch(arch_json: Any, prove: bool, settings: Settings) -> dict[str, Any]:
    """The inspect report of ``arch_json`` (a 422 sentence when it is not a valid arch)."""
    arch = parse_arch(arch_json, max_params=settings.max_params)
    proof = _proof(arch, prove, settings)
    return inspect_report(arch, proof)


def _proof_bytes(arch: Architecture) -> int:
    """Three float32 copies of the weights (the model, its working copy, the permuted state)
    and every module's output for each example: an upper bound of the proof's peak."""
    values = 3 * arch.num_params() + PROOF_EXAMPLES * arch_shapes(arch).all_module_values
    return FLOAT32_BYTES * values


def _proof(arch: Architecture, prove: bool, settings: Settings) -> dict[str, Any]:
    if not prove:
        return {"tolerance": PROOF_TOLERANCE, "skipped": "not asked for (prove: false)"}
    needed = _proof_bytes(arch)
    if needed > settings.inspect_proof_max_bytes:
        return {
            "tolerance": PROOF_TOLERANCE,
            "skipped": (
                f"its proof would need about {needed / 2**20:,.0f} MiB, more than this service "
                f"spends on request ({settings.inspect_proof_max_bytes / 2**20:,.0f} MiB); "
                "every job proves it on its own weights"
            ),
        }
    if not _one_proof_at_a_time.acquire(timeout=PROOF_WAIT_SECONDS):
        raise ServiceBusyError(
            'Another inspection is proving its spec; try again in a minute, or pass "prove": false.'
        )
    try:
        return prove_arch(arch)
    finally:
        _one_proof_at_a_time.release()
