"""Inspecting an arch: its derived permutation groups, what stays in place and why, and the
proof, computed in the API process.

The proof builds the model with random weights on the CPU, so it is bounded twice: only archs
up to ``inspect_proof_max_params`` are proved here (every job proves its own spec anyway), and
one proof runs at a time per API process, so a burst of requests cannot hold many models in
memory at once.
"""

from __future__ import annotations

import threading
from typing import Any

from llfc_core.archs import parse_arch
from llfc_core.symmetry.proof import PROOF_TOLERANCE
from llfc_core.symmetry.report import inspect_report, prove_arch
from service.core.config import Settings
from service.errors import ServiceBusyError

PROOF_WAIT_SECONDS = 30.0
_one_proof_at_a_time = threading.Lock()


def inspect_arch(arch_json: Any, prove: bool, settings: Settings) -> dict[str, Any]:
    """The inspect report of ``arch_json`` (a 422 sentence when it is not a valid arch)."""
    arch = parse_arch(arch_json, max_params=settings.max_params)
    proof = _proof(arch, prove, settings)
    return inspect_report(arch, proof)


def _proof(arch: Any, prove: bool, settings: Settings) -> dict[str, Any]:
    if not prove:
        return {"tolerance": PROOF_TOLERANCE, "skipped": "not asked for (prove: false)"}
    params = arch.num_params()
    if params > settings.inspect_proof_max_params:
        return {
            "tolerance": PROOF_TOLERANCE,
            "skipped": (
                f"the arch has {params:,} parameters, more than this service proves on request "
                f"({settings.inspect_proof_max_params:,}); every job proves it on its own weights"
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
