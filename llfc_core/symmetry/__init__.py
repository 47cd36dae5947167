"""Permutation symmetries found from a model's graph, and proved before they are used."""

from llfc_core.symmetry.derive import DerivedSymmetry, FeatureSite, UnpermutedAxis, derive_symmetry
from llfc_core.symmetry.proof import PROOF_TOLERANCE, check_proof, prove_symmetry

__all__ = [
    "PROOF_TOLERANCE",
    "DerivedSymmetry",
    "FeatureSite",
    "UnpermutedAxis",
    "check_proof",
    "derive_symmetry",
    "prove_symmetry",
]
