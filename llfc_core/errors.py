"""Typed errors a caller can cause. Each carries a sentence a person can act on.

The service maps every subclass of :class:`LLFCError` to a 4xx problem detail once;
anything else escaping the engine is a bug.
"""

from __future__ import annotations


class LLFCError(Exception):
    """Base class: the message is a complete sentence meant for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ArchitectureError(LLFCError):
    """An arch JSON object that names no known architecture or has bad hyperparameters."""


class CheckpointMismatchError(LLFCError):
    """A state dict that does not fit its arch: missing, extra or mis-shaped tensors.

    ``suggested_key_map`` (file name -> arch name, every tensor) is the renaming under which it
    would fit, when :mod:`llfc_core.key_maps` finds one; None otherwise.
    """

    def __init__(
        self,
        message: str,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mis_shaped: list[str] | None = None,
        suggested_key_map: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.missing = missing or []
        self.unexpected = unexpected or []
        self.mis_shaped = mis_shaped or []
        self.suggested_key_map = suggested_key_map


class KeyMapError(LLFCError):
    """A key_map (a renaming of a checkpoint's tensors) that is malformed or names a tensor the
    file or the arch does not have."""


class CheckpointFormatError(LLFCError):
    """Bytes that are not a readable safetensors file or weights-only torch state dict."""


class OnnxModelError(CheckpointFormatError):
    """An .onnx upload that is refused: external data, an op outside the allowlist, or a graph
    that cannot become a torch module without guessing."""


class IncompatiblePairError(LLFCError):
    """Two models that cannot be compared: different architectures or shapes."""


class DatasetError(LLFCError):
    """Data of the wrong shape or dtype, or a dataset that does not fit the arch."""


class InvalidParameterError(LLFCError):
    """A job parameter outside its allowed range (alphas outside [0, 1], unknown method...)."""


class CancelledError(LLFCError):
    """Raised between batches when the caller's cancellation check says stop."""

    def __init__(self, message: str = "The job was cancelled.") -> None:
        super().__init__(message)


class JobTooLargeError(LLFCError):
    """A job whose estimated peak memory passes what the service allows one job."""


class SymmetryProofError(LLFCError):
    """A derived permutation spec whose permuted weights did not compute the same function."""
