"""llfc_core: the engine of LLFC Align.

Architectures and their permutation symmetries, weight and activation matching, interpolation,
and the LMC / LLFC / Condition I-II analysis of the paper "Going Beyond Linear Mode Connectivity:
The Layerwise Linear Feature Connectivity". Pure torch, numpy and scipy.
"""

__version__ = "0.1.0"
