"""Distances used by the analysis, each computed per example on flattened features.

- cosine distance:  d_cos(u, v) = 1 - <u, v> / (||u|| ||v||), with d_cos(0, 0) = 0 and
  d_cos(0, v) = 1. Used for LLFC and its A-B baseline, as in the paper's Fig. 3.
- relative squared distance:  d_rel(u, v) = ||u - v||^2 / (0.5 (||u||^2 + ||v||^2)), with
  d_rel(0, 0) = 0. It lies in [0, 4], is symmetric, and equals the paper's
  ||u - v||^2 / (||u|| ||v||) up to a factor that is 1 when ||u|| = ||v||; unlike that ratio it
  stays finite when one side is zero. Used for Condition I (per example) and Condition II
  (over the whole data matrix).
"""

from __future__ import annotations

import torch

TINY = 1e-300


def cosine_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-row 1 - cos(u_i, v_i) for (N, D) float64 inputs."""
    dot = (u * v).sum(1)
    norm_u = u.norm(dim=1)
    norm_v = v.norm(dim=1)
    cosine = (dot / (norm_u * norm_v).clamp_min(TINY)).clamp(-1.0, 1.0)
    both_zero = (norm_u == 0) & (norm_v == 0)
    return torch.where(both_zero, torch.zeros_like(cosine), 1.0 - cosine)


def relative_squared_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-row ||u_i - v_i||^2 / (0.5 (||u_i||^2 + ||v_i||^2)) for (N, D) inputs."""
    numerator = (u - v).pow(2).sum(1)
    denominator = 0.5 * (u.pow(2).sum(1) + v.pow(2).sum(1))
    return torch.where(
        denominator > 0, numerator / denominator.clamp_min(TINY), torch.zeros_like(numerator)
    )


def relative_squared_distance_from_sums(
    squared_difference: float, squared_norm_u: float, squared_norm_v: float
) -> float:
    """d_rel of two whole matrices from their accumulated squared norms."""
    denominator = 0.5 * (squared_norm_u + squared_norm_v)
    return squared_difference / denominator if denominator > 0 else 0.0


DISTANCE_NAMES = {
    "llfc": "mean over examples of the cosine distance 1 - cos, features flattened per example",
    "cos_ab": "mean over examples of the cosine distance 1 - cos between A's and B's features",
    "scale_c": "least-squares c minimising sum_x ||c f(theta_alpha; x) - target(x)||^2",
    "weak_additivity": (
        "mean over examples of the relative squared distance ||u - v||^2 / (0.5(||u||^2 + ||v||^2))"
        " between act(alpha h_A + (1 - alpha) h_B) and alpha act(h_A) + (1 - alpha) act(h_B),"
        " act being the layer's activation (ReLU, GELU, ...)"
    ),
    "commutativity": (
        "relative squared distance over the whole data matrix between W_A H_A + W_B H_B and "
        "W_A H_B + W_B H_A; factors: the same distance between W_A and W_B, and H_A and H_B"
    ),
    "barrier": "max over alpha of m(theta_alpha) - (alpha m(A) + (1 - alpha) m(B))",
}
