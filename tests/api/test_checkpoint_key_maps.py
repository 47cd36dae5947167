"""Uploads with a key_map over real HTTP: a lab's own names are refused with the renaming that
fits, stored under the arch's names when the upload asks for it, and the renaming is reported."""

from __future__ import annotations

import json

import httpx
import torch
from support.api import mlp_arch, read_safetensors, torch_file, upload_checkpoint
from torch import nn

WIDTHS = [12, 8, 8, 3]


def class_style_state(seed: int, widths: list[int] = WIDTHS) -> dict[str, torch.Tensor]:
    """The MLP of ``widths`` as labs write it: layers ``fc1``, ``fc2``, ..., ``out``."""
    torch.manual_seed(seed)
    model = nn.Module()
    for index in range(len(widths) - 1):
        name = "out" if index == len(widths) - 2 else f"fc{index + 1}"
        model.add_module(name, nn.Linear(widths[index], widths[index + 1]))
    return dict(model.state_dict())


def arch_names(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """The renaming of a class-style state to the mlp arch's Sequential names (0, 2, 4, ...)."""
    modules = list(dict.fromkeys(name.rpartition(".")[0] for name in state))
    return {
        name: f"{2 * modules.index(name.rpartition('.')[0])}.{name.rpartition('.')[2]}"
        for name in state
    }


def test_a_class_style_mlp_is_refused_with_the_renaming_that_fits(alice: httpx.Client) -> None:
    state = class_style_state(seed=301)
    response = upload_checkpoint(alice, torch_file(state), mlp_arch(WIDTHS))
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"] == "/problems/checkpoint-mismatch"
    assert "fc1 -> 0, fc2 -> 2, out -> 4" in problem["detail"]
    assert problem["suggested_key_map"] == arch_names(state)
    assert problem["unexpected"] == list(state)


def test_by_order_stores_the_arch_names_and_reports_the_renaming(alice: httpx.Client) -> None:
    state = class_style_state(seed=302)
    response = upload_checkpoint(alice, torch_file(state), mlp_arch(WIDTHS), key_map="by_order")
    assert response.status_code == 201, response.text
    checkpoint = response.json()
    assert checkpoint["key_map"] == arch_names(state)
    assert alice.get(f"/v1/checkpoints/{checkpoint['id']}").json() == checkpoint
    download = alice.get(f"/v1/checkpoints/{checkpoint['id']}/file")
    assert download.headers["X-Checkpoint-Key-Map"] == "applied"
    stored = read_safetensors(download.content)
    assert set(stored) == {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}
    for name, target in arch_names(state).items():
        assert torch.equal(stored[target], state[name])


def test_the_same_bytes_keep_their_renaming_and_another_one_is_a_conflict(
    alice: httpx.Client,
) -> None:
    widths = [12, 8, 8, 8, 3]
    state = class_style_state(seed=303, widths=widths)
    content = torch_file(state)
    first = upload_checkpoint(alice, content, mlp_arch(widths), key_map="by_order")
    assert first.status_code == 201, first.text
    explicit = json.dumps(arch_names(state))
    for key_map in (explicit, "by_order", None):
        again = upload_checkpoint(alice, content, mlp_arch(widths), key_map=key_map)
        assert again.status_code == 201, again.text
        assert again.json()["id"] == first.json()["id"]
    # fc2 and fc3 swapped: a renaming that fits too, but these bytes of this arch are stored.
    swapped = arch_names(state) | {"fc2.weight": "4.weight", "fc2.bias": "4.bias"}
    swapped |= {"fc3.weight": "2.weight", "fc3.bias": "2.bias"}
    conflict = upload_checkpoint(alice, content, mlp_arch(widths), key_map=json.dumps(swapped))
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["type"] == "/problems/key-map-conflict"
    assert conflict.json()["checkpoint_id"] == first.json()["id"]


def test_an_upload_with_the_arch_names_reports_no_renaming(alice: httpx.Client) -> None:
    state = class_style_state(seed=304)
    canonical = {arch_names(state)[name]: tensor for name, tensor in state.items()}
    response = upload_checkpoint(alice, torch_file(canonical), mlp_arch(WIDTHS), key_map="by_order")
    assert response.status_code == 201, response.text
    assert response.json()["key_map"] is None
    download = alice.get(f"/v1/checkpoints/{response.json()['id']}/file")
    assert download.headers["X-Checkpoint-Key-Map"] == "none"


def test_a_bad_key_map_is_a_422_sentence_naming_it(alice: httpx.Client) -> None:
    content = torch_file(class_style_state(seed=305))
    cases = {
        "{not json": "The 'key_map' field is not valid JSON",
        '["fc1.weight"]': 'must be "by_order" or a JSON object',
        '{"fc1.weight": "0.weight", "fc1.bias": "0.weight"}': "both rename to '0.weight'",
        '{"fc9.weight": "0.weight"}': "'fc9.weight' names no tensor of the file",
    }
    for key_map, sentence in cases.items():
        response = upload_checkpoint(alice, content, mlp_arch(WIDTHS), key_map=key_map)
        assert response.status_code == 422, key_map
        assert response.json()["type"] == "/problems/invalid-key-map"
        assert sentence in response.json()["detail"], response.json()["detail"]


def test_a_renaming_of_names_holding_a_nul_is_refused_before_the_database(
    alice: httpx.Client,
) -> None:
    # PostgreSQL's JSON cannot hold the NUL of the recorded renaming; SQLite would store it.
    state = {
        name.replace("fc1", "fc\x001"): tensor for name, tensor in class_style_state(306).items()
    }
    response = upload_checkpoint(alice, torch_file(state), mlp_arch(WIDTHS), key_map="by_order")
    assert response.status_code == 422, response.text
    assert response.json()["type"] == "/problems/invalid-key-map"
    assert "NUL character" in response.json()["detail"]
