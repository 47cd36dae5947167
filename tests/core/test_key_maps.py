"""Key maps: state dicts saved under a lab's own names are renamed to the arch's when their
modules fit it in order and shape, and only then."""

from __future__ import annotations

from collections import OrderedDict
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from llfc_core.archs import Architecture, parse_arch
from llfc_core.checkpoints import read_checkpoint
from llfc_core.errors import CheckpointMismatchError, KeyMapError
from llfc_core.key_maps import (
    BY_ORDER,
    fit_state_dict,
    key_order,
    parse_key_map,
    propose_key_map,
)

WIDTHS = [8, 16, 16, 4]


class ClassStyleMLP(nn.Module):
    """The MLP of WIDTHS as labs write it: named layers, ReLUs applied in forward."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(widths[0], widths[1])
        self.fc2 = nn.Linear(widths[1], widths[2])
        self.out = nn.Linear(widths[2], widths[3])


def dropout_sequential(widths: list[int]) -> nn.Sequential:
    """Linear, ReLU, Dropout, ..., Linear: the Linears sit at indices 0, 3, 6, ..."""
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(pairwise(widths)):
        layers.append(nn.Linear(fan_in, fan_out))
        if index < len(widths) - 2:
            layers += [nn.ReLU(), nn.Dropout(0.1)]
    return nn.Sequential(*layers)


def torch_saved(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(OrderedDict(state), path)
    return path


@pytest.fixture(scope="module")
def mlp() -> Architecture:
    return parse_arch({"name": "mlp", "widths": WIDTHS})


@pytest.fixture(scope="module")
def class_style_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return dict(ClassStyleMLP(WIDTHS).state_dict())


def test_a_class_style_mlp_is_refused_with_the_exact_renaming(
    tmp_path: Path, mlp: Architecture, class_style_state: dict[str, torch.Tensor]
) -> None:
    state, file_format = read_checkpoint(torch_saved(class_style_state, tmp_path / "lab.pt"))
    with pytest.raises(CheckpointMismatchError) as caught:
        fit_state_dict(mlp, state, order=key_order(file_format))
    error = caught.value
    assert "fc1 -> 0, fc2 -> 2, out -> 4" in error.message
    assert "in the order the file keeps them" in error.message
    assert 'key_map "by_order"' in error.message
    assert error.suggested_key_map == {
        "fc1.weight": "0.weight",
        "fc1.bias": "0.bias",
        "fc2.weight": "2.weight",
        "fc2.bias": "2.bias",
        "out.weight": "4.weight",
        "out.bias": "4.bias",
    }
    assert error.unexpected[0] == "fc1.weight"


def test_by_order_then_stores_the_class_style_mlp_under_the_arch_names(
    tmp_path: Path, mlp: Architecture, class_style_state: dict[str, torch.Tensor]
) -> None:
    state, file_format = read_checkpoint(torch_saved(class_style_state, tmp_path / "lab.pt"))
    cleaned, applied = fit_state_dict(mlp, state, BY_ORDER, key_order(file_format))
    assert list(cleaned) == list(mlp.expected_shapes())
    assert torch.equal(cleaned["2.weight"], class_style_state["fc2.weight"])
    assert torch.equal(cleaned["4.bias"], class_style_state["out.bias"])
    assert applied["out.weight"] == "4.weight"
    assert len(applied) == 6
    mlp.build().load_state_dict(cleaned, strict=True)


def test_a_sequential_with_dropout_is_paired_in_natural_order_from_safetensors(
    tmp_path: Path,
) -> None:
    # Six Linears at 0, 3, ..., 15; four of them 16x16, at 3, 6, 9 and 12. Sorted as text, 12
    # would come before 3: only numbers compared as numbers pair them right.
    widths = [8, 16, 16, 16, 16, 16, 4]
    arch = parse_arch({"name": "mlp", "widths": widths})
    torch.manual_seed(1)
    original = dropout_sequential(widths).state_dict()
    path = tmp_path / "dropout.safetensors"
    save_file(dict(original), path)
    state, file_format = read_checkpoint(path)
    assert key_order(file_format) == "names"
    with pytest.raises(CheckpointMismatchError) as caught:
        fit_state_dict(arch, state, order="names")
    assert "0 -> 0, 3 -> 2, 6 -> 4, 9 -> 6, 12 -> 8, 15 -> 10" in caught.value.message
    assert "natural order of their names" in caught.value.message
    cleaned, applied = fit_state_dict(arch, state, BY_ORDER, "names")
    for source, target in [(3, 2), (6, 4), (9, 6), (12, 8), (15, 10)]:
        assert torch.equal(cleaned[f"{target}.weight"], original[f"{source}.weight"])
    assert "0.weight" not in applied
    assert applied["12.weight"] == "8.weight"


# Importing torch's compiler warns about TorchScript APIs it still defines; not ours to fix.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_torch_compiled_models_prefix_is_removed_when_read(
    tmp_path: Path, mlp: Architecture
) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
    )
    compiled_state = torch.compile(model).state_dict()
    assert next(iter(compiled_state)).startswith("_orig_mod.")
    state, _ = read_checkpoint(torch_saved(compiled_state, tmp_path / "compiled.pt"))
    cleaned, applied = fit_state_dict(mlp, state)
    assert applied == {}
    assert torch.equal(cleaned["2.weight"], model.state_dict()["2.weight"])


def test_a_compiled_data_parallel_models_two_prefixes_are_removed(
    tmp_path: Path, mlp: Architecture
) -> None:
    canonical = {key: torch.zeros(shape) for key, shape in mlp.expected_shapes().items()}
    wrapped = {f"_orig_mod.module.{key}": value for key, value in canonical.items()}
    state, _ = read_checkpoint(torch_saved(wrapped, tmp_path / "wrapped.pt"))
    assert list(state) == list(canonical)


def test_a_shape_mismatch_gives_no_suggestion(mlp: Architecture) -> None:
    state = dict(ClassStyleMLP([8, 16, 12, 4]).state_dict())
    with pytest.raises(CheckpointMismatchError) as caught:
        fit_state_dict(mlp, state)
    assert caught.value.suggested_key_map is None
    assert "renamed" not in caught.value.message
    with pytest.raises(CheckpointMismatchError, match='key_map "by_order" found no renaming'):
        fit_state_dict(mlp, state, BY_ORDER)


def test_a_module_missing_a_tensor_pairs_with_nothing(mlp: Architecture) -> None:
    shapes = {"fc1.weight": (16, 8), "fc1.bias": (16,), "fc2.weight": (16, 16)}
    shapes |= {"fc2.scale": (16,), "out.weight": (4, 16), "out.bias": (4,)}
    assert propose_key_map(shapes, mlp.expected_shapes(), "file") is None


class UnorderedNames(nn.Module):
    """Two 16x16 layers whose names say nothing of their order."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.hidden = nn.Linear(16, 16)
        self.extra = nn.Linear(16, 16)
        self.out = nn.Linear(16, 4)


def test_same_shaped_modules_without_a_trusted_order_are_called_ambiguous() -> None:
    arch = parse_arch({"name": "mlp", "widths": [8, 16, 16, 16, 4]})
    state = dict(UnorderedNames().state_dict())
    with pytest.raises(CheckpointMismatchError) as caught:
        fit_state_dict(arch, state, order="names")
    assert caught.value.suggested_key_map is None
    assert "modules extra, hidden have the same shapes" in caught.value.message
    with pytest.raises(CheckpointMismatchError, match="cannot be told"):
        fit_state_dict(arch, state, BY_ORDER, "names")
    # torch.save keeps the order the model registered them in, so the same file as .pt pairs.
    cleaned, applied = fit_state_dict(arch, state, BY_ORDER, "file")
    assert applied["hidden.weight"] == "2.weight"
    assert torch.equal(cleaned["4.weight"], state["extra.weight"])


def test_by_order_leaves_a_state_with_the_arch_names_as_it_is(mlp: Architecture) -> None:
    torch.manual_seed(3)
    state = dict(mlp.build().state_dict())
    cleaned, applied = fit_state_dict(mlp, state, BY_ORDER, "names")
    assert applied == {}
    assert all(torch.equal(cleaned[key], state[key]) for key in state)


def test_an_explicit_key_map_renames_and_reports_only_what_changed(
    mlp: Architecture, class_style_state: dict[str, torch.Tensor]
) -> None:
    # The two hidden layers swapped on purpose: an explicit map is obeyed as written.
    key_map = {"fc1.weight": "0.weight", "fc1.bias": "0.bias"}
    key_map |= {"fc2.weight": "2.weight", "fc2.bias": "2.bias"}
    key_map |= {"out.weight": "4.weight", "out.bias": "4.bias"}
    cleaned, applied = fit_state_dict(mlp, class_style_state, key_map)
    assert applied == key_map
    assert torch.equal(cleaned["0.bias"], class_style_state["fc1.bias"])
    partial = {"3.weight": "2.weight", "3.bias": "2.bias", "6.weight": "4.weight"}
    sequential = dict(dropout_sequential(WIDTHS).state_dict())
    with pytest.raises(CheckpointMismatchError) as caught:
        fit_state_dict(mlp, sequential, partial)
    assert caught.value.missing == ["4.bias"]
    assert caught.value.message.startswith("After the key_map's renaming")


@pytest.mark.parametrize(
    ("key_map", "sentence"),
    [
        (
            {"fc1.weight": "0.weight", "fc1.bias": "0.weight"},
            "entries 'fc1.weight' and 'fc1.bias' both rename to '0.weight'",
        ),
        ({"fc9.weight": "0.weight"}, "entry 'fc9.weight' names no tensor of the file"),
        ({"fc1.weight": "1.weight"}, "'1.weight', which is no tensor of the arch"),
    ],
)
def test_an_explicit_key_map_that_is_not_one_to_one_onto_the_arch_is_refused(
    mlp: Architecture,
    class_style_state: dict[str, torch.Tensor],
    key_map: dict[str, str],
    sentence: str,
) -> None:
    with pytest.raises(KeyMapError) as caught:
        fit_state_dict(mlp, class_style_state, key_map)
    assert sentence in caught.value.message
    assert caught.value.message.count(". ") == 0


def test_a_key_map_may_not_rename_onto_a_name_it_leaves_in_place(mlp: Architecture) -> None:
    state = dict(dropout_sequential(WIDTHS).state_dict())
    with pytest.raises(KeyMapError, match=r"'3\.weight' renames it to '0\.weight'"):
        fit_state_dict(mlp, state, {"3.weight": "0.weight"})


@pytest.mark.parametrize(
    ("value", "sentence"),
    [
        (["fc1.weight"], 'must be "by_order" or a JSON object'),
        ("by_name", 'must be "by_order" or a JSON object'),
        ({"fc1.weight": 0}, "entry 'fc1.weight' must map to a tensor name"),
    ],
)
def test_a_key_map_of_the_wrong_form_is_refused(value: object, sentence: str) -> None:
    with pytest.raises(KeyMapError, match=sentence):
        parse_key_map(value)


def test_parse_key_map_accepts_by_order_and_objects_of_names() -> None:
    assert parse_key_map("by_order") == BY_ORDER
    assert parse_key_map({"a.weight": "0.weight"}) == {"a.weight": "0.weight"}


def test_the_suggestion_is_bounded_by_the_arch_not_the_file(mlp: Architecture) -> None:
    state = {f"extra.{index}": torch.zeros(1) for index in range(10_000)}
    with pytest.raises(CheckpointMismatchError) as caught:
        fit_state_dict(mlp, state)
    assert caught.value.suggested_key_map is None
    assert len(caught.value.unexpected) == 100
