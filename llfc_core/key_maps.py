"""Renaming a checkpoint's tensors to its arch's names (a *key map*), as labs save them.

A lab's model is often the arch's network under other names: a class-style MLP (``fc1``, ``fc2``,
``out``), a ``Sequential`` with Dropout between its layers (``0``, ``3``, ``6``). Such a file
holds the right tensors under the wrong names, and :func:`fit_state_dict` can rename them:

* ``key_map`` a mapping ``{file name: arch name}``: those tensors are renamed, the others keep
  their names, and the result must fit the arch.
* ``key_map`` ``"by_order"`` (:data:`BY_ORDER`): the renaming :func:`propose_key_map` finds.

:func:`propose_key_map` pairs *modules*, not single tensors. A module is a name up to its last dot
(``fc1`` of ``fc1.weight``); its signature is its tensors' last name parts with their shapes
(``weight [64, 784]``, ``bias [64]``). The file and the arch must have the same signatures the
same number of times; each file module becomes the arch module of its signature, and modules
that share one are paired in order. The order is what the file keeps:

* ``"file"``: the order the file lists its tensors in. ``torch.save`` keeps a state dict's order,
  which is the order the model registered its modules.
* ``"names"``: the names' natural order (numbers compared as numbers: ``2 < 10``). A safetensors
  file keeps no order (its header is sorted by dtype and name), so modules sharing a signature
  are paired this way only when their names differ in numbers alone (``layers.0``, ``layers.1``;
  ``fc1``, ``fc2``); otherwise which is which cannot be told, and no renaming is proposed.

Leaf names never change (``weight`` stays ``weight``), so a module missing a tensor (a BatchNorm
without ``num_batches_tracked``) pairs with nothing. Without a ``key_map``, a file that does not
fit is refused with :class:`CheckpointMismatchError` carrying the renaming that would make it fit
(``suggested_key_map``), when there is one.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from llfc_core.archs.base import Architecture
from llfc_core.checkpoints import WRAPPER_PREFIXES, CheckpointFormat, validate_state_dict
from llfc_core.errors import CheckpointMismatchError, KeyMapError
from llfc_core.permutation import StateDict

BY_ORDER: Literal["by_order"] = "by_order"
KeyMap = dict[str, str]
"""File name -> arch name."""
KeyMapRequest = Mapping[str, str] | Literal["by_order"] | None
KeyOrder = Literal["file", "names"]
MAX_PAIRS_IN_MESSAGE = 10

Signature = tuple[tuple[str, tuple[int, ...]], ...]
_NUMBER = re.compile(r"([0-9]+)")


@dataclass(frozen=True)
class KeyMapProposal:
    """What pairing a file's modules with the arch's found.

    ``key_map`` renames every tensor of the file (identical names included), with
    ``module_pairs`` (file module, arch module) in the arch's order; or it is None and
    ``ambiguous`` names file modules that share a signature and whose order cannot be trusted.
    """

    key_map: KeyMap | None
    module_pairs: tuple[tuple[str, str], ...] = ()
    ambiguous: tuple[str, ...] = ()


def key_order(file_format: CheckpointFormat) -> KeyOrder:
    """The order a file of ``file_format`` keeps its tensors in: torch.save keeps the state
    dict's, safetensors none."""
    return "file" if file_format == "torch" else "names"


def parse_key_map(value: Any) -> KeyMapRequest:
    """A key_map given as JSON: ``"by_order"`` or an object of strings; KeyMapError otherwise."""
    if value == BY_ORDER:
        return BY_ORDER
    if not isinstance(value, dict):
        raise KeyMapError(
            f'The key_map must be "{BY_ORDER}" or a JSON object mapping the file\'s tensor names '
            f"to the arch's, got {_describe(value)}."
        )
    for name, target in value.items():
        if not isinstance(target, str):
            raise KeyMapError(
                f"The key_map entry {name!r} must map to a tensor name of the arch (a string), "
                f"got {_describe(target)}."
            )
    return dict(value)


def propose_key_map(
    shapes: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    order: KeyOrder,
) -> KeyMapProposal | None:
    """The renaming of the tensors ``shapes`` (file name -> shape, in the file's order) onto
    ``expected`` (the arch's names and shapes, in module order), pairing modules as the module
    docstring says; None when their signatures differ."""
    if len(shapes) != len(expected):
        return None
    names = list(shapes) if order == "file" else sorted(shapes, key=_natural)
    file_modules = _modules({name: shapes[name] for name in names})
    arch_modules = _modules(expected)
    if Counter(file_modules.values()) != Counter(arch_modules.values()):
        return None
    file_by_signature: dict[Signature, list[str]] = defaultdict(list)
    for module, signature in file_modules.items():
        file_by_signature[signature].append(module)
    ambiguous = [
        module
        for modules in file_by_signature.values()
        if order == "names" and len({_NUMBER.sub("#", module) for module in modules}) > 1
        for module in modules
    ]
    if ambiguous:
        return KeyMapProposal(None, ambiguous=tuple(ambiguous))
    file_module_of: dict[str, str] = {}
    taken: Counter[Signature] = Counter()
    for arch_module, signature in arch_modules.items():
        file_module_of[arch_module] = file_by_signature[signature][taken[signature]]
        taken[signature] += 1
    key_map = {}
    for name in expected:
        arch_module, _dot, leaf = name.rpartition(".")
        key_map[_join(file_module_of[arch_module], leaf)] = name
    pairs = tuple((file_module, arch_module) for arch_module, file_module in file_module_of.items())
    return KeyMapProposal(key_map, pairs)


def fit_state_dict(
    arch: Architecture,
    state: Mapping[str, torch.Tensor],
    key_map: KeyMapRequest = None,
    order: KeyOrder = "file",
) -> tuple[StateDict, KeyMap]:
    """``state`` renamed by ``key_map``, then checked and cleaned by ``validate_state_dict``;
    returns it with the renaming applied (only names that changed; empty when none did).

    ``order`` is the order ``state`` came in (:func:`key_order`). ``"by_order"`` leaves a state
    whose names already are the arch's as it is. Raises :class:`KeyMapError` for a map naming
    what is not there, :class:`CheckpointMismatchError` (with the renaming that would fit, when
    ``key_map`` is None and there is one) for a state that does not fit.
    """
    expected = arch.expected_shapes()
    renaming: KeyMap = {}
    proposal = None
    if key_map == BY_ORDER:
        if set(state) != set(expected):
            proposal = _proposal(state, expected, order)
            if proposal is not None and proposal.key_map is not None:
                renaming = proposal.key_map
    elif isinstance(key_map, Mapping):
        renaming = _checked_key_map(state, key_map, expected)
    renamed = {renaming.get(name, name): tensor for name, tensor in state.items()}
    try:
        cleaned = validate_state_dict(arch, renamed)
    except CheckpointMismatchError as error:
        if key_map == BY_ORDER:
            raise _no_renaming_found(error, proposal, order) from error
        if key_map is not None:
            raise CheckpointMismatchError(
                f"After the key_map's renaming: {error.message}",
                error.missing,
                error.unexpected,
                error.mis_shaped,
            ) from error
        raise _with_suggestion(error, _proposal(state, expected, order), order) from error
    return cleaned, {old: new for old, new in renaming.items() if old != new}


def _proposal(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], order: KeyOrder
) -> KeyMapProposal | None:
    shapes = {
        name: tuple(tensor.shape)
        for name, tensor in state.items()
        if isinstance(tensor, torch.Tensor)
    }
    return propose_key_map(shapes, expected, order) if len(shapes) == len(state) else None


def _checked_key_map(
    state: Mapping[str, torch.Tensor], key_map: Mapping[str, str], expected: Mapping[str, Any]
) -> KeyMap:
    """``key_map`` after checking that it names tensors of the file, renames them to tensors of
    the arch, and gives no two tensors one name."""
    renamed_to: dict[str, str] = {}
    for name, target in key_map.items():
        if name not in state:
            raise KeyMapError(
                f"The key_map entry {name!r} names no tensor of the file (its names, once the "
                f"prefixes {' and '.join(map(repr, WRAPPER_PREFIXES))} are removed: "
                f"{_listed(list(state))})."
            )
        if target not in expected:
            raise KeyMapError(
                f"The key_map entry {name!r} renames it to {target!r}, which is no tensor of the "
                f"arch (its tensors: {_listed(list(expected))})."
            )
        if target in renamed_to:
            raise KeyMapError(
                f"The key_map entries {renamed_to[target]!r} and {name!r} both rename to "
                f"{target!r}; each arch tensor can come from one file tensor only."
            )
        renamed_to[target] = name
    for target, name in renamed_to.items():
        if target in state and target not in key_map:
            raise KeyMapError(
                f"The key_map entry {name!r} renames it to {target!r}, a name the file already "
                f"has for a tensor the key_map leaves as it is; map {target!r} as well."
            )
    return dict(key_map)


def _with_suggestion(
    error: CheckpointMismatchError, proposal: KeyMapProposal | None, order: KeyOrder
) -> CheckpointMismatchError:
    """``error``, with the renaming that would fit (or why none can be trusted) added."""
    if proposal is None:
        return error
    if proposal.key_map is None:
        sentence = _ambiguity_sentence(proposal)
    else:
        pairs = [f"{_shown(old)} -> {_shown(new)}" for old, new in proposal.module_pairs]
        sentence = (
            f"Its tensors fit the arch if renamed, pairing modules by their tensors' names and "
            f"shapes, in {_order_words(order)}: {_listed(pairs, MAX_PAIRS_IN_MESSAGE)}; upload "
            f'it with key_map "{BY_ORDER}" to store it under the arch\'s names '
            "(suggested_key_map lists every tensor's)."
        )
    return CheckpointMismatchError(
        f"{error.message} {sentence}",
        error.missing,
        error.unexpected,
        error.mis_shaped,
        suggested_key_map=proposal.key_map,
    )


def _no_renaming_found(
    error: CheckpointMismatchError, proposal: KeyMapProposal | None, order: KeyOrder
) -> CheckpointMismatchError:
    """Why ``"by_order"`` found no renaming: the mismatch, and the ambiguity when that is why."""
    detail = (
        _ambiguity_sentence(proposal)
        if proposal is not None
        else "No renaming fits either: its modules' tensor names and shapes are not the arch's "
        f"(modules paired in {_order_words(order)})."
    )
    return CheckpointMismatchError(
        f'key_map "{BY_ORDER}" found no renaming. {error.message} {detail}',
        error.missing,
        error.unexpected,
        error.mis_shaped,
    )


def _ambiguity_sentence(proposal: KeyMapProposal) -> str:
    return (
        f"Its tensors' shapes fit the arch, but modules {_listed(list(proposal.ambiguous))} have "
        "the same shapes and a safetensors file keeps no order, so which becomes which cannot "
        "be told from the file; send a key_map naming each tensor's arch name."
    )


def _order_words(order: KeyOrder) -> str:
    if order == "file":
        return "the order the file keeps them"
    return "the natural order of their names, as a safetensors file keeps no order"


def _modules(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Signature]:
    """Module name -> signature (sorted leaf names with shapes), in order of first appearance."""
    leaves: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for name, shape in shapes.items():
        module, _dot, leaf = name.rpartition(".")
        leaves.setdefault(module, []).append((leaf, shape))
    return {module: tuple(sorted(items)) for module, items in leaves.items()}


def _join(module: str, leaf: str) -> str:
    return f"{module}.{leaf}" if module else leaf


def _natural(name: str) -> tuple[Any, ...]:
    """Sort key comparing the digit runs of ``name`` as numbers: ``fc2 < fc10``."""
    parts: list[Any] = _NUMBER.split(name)
    parts[1::2] = [int(part) for part in parts[1::2]]
    return tuple(parts)


def _shown(module: str) -> str:
    return module or "(top level)"


def _listed(names: list[str], limit: int = MAX_PAIRS_IN_MESSAGE) -> str:
    shown = ", ".join(names[:limit])
    hidden = len(names) - limit
    return f"{shown} and {hidden} more" if hidden > 0 else shown


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"
