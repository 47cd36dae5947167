"""Where the engine computes: a setting (auto, cuda or cpu) resolved to a torch device."""

from __future__ import annotations

import torch

from llfc_core.errors import InvalidParameterError

DEVICE_SETTINGS = ("auto", "cuda", "cpu")


def resolve_device(setting: str = "auto") -> torch.device:
    """The device for ``setting``: ``auto`` picks CUDA when this machine has it, CPU otherwise.

    Asking for ``cuda`` on a machine without it is refused rather than silently falling back,
    so a deployment that expects a GPU learns at once that it has none.
    """
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda":
        if not torch.cuda.is_available():
            raise InvalidParameterError(
                "The device 'cuda' was requested but this machine has no usable CUDA GPU; "
                "use 'auto' or 'cpu'."
            )
        return torch.device("cuda")
    if setting == "cpu":
        return torch.device("cpu")
    raise InvalidParameterError(
        f"Unknown device {setting!r}; the device must be one of {', '.join(DEVICE_SETTINGS)}."
    )
