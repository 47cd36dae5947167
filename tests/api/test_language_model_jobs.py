"""Language models over HTTP: a GPT-2 checkpoint uploads under the library's own keys, token
datasets upload and are listed as such, and train, interpolate and analyze jobs run on
builtin:markov, scored on next-token prediction; a model and data of different tasks are refused
at submission."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from safetensors.numpy import save as save_numpy_safetensors
from support.api import (
    read_safetensors,
    run_job,
    safetensors_file,
    submit,
    torch_file,
    upload_checkpoint,
    upload_mlp,
    wait_for_job,
)
from transformers import GPT2Config, GPT2LMHeadModel

TINY_CONFIG = {"vocab_size": 16, "n_positions": 16, "n_embd": 32, "n_layer": 2, "n_head": 4}
TINY_GPT2 = {"name": "transformers", "model": "gpt2", "config": TINY_CONFIG}
TRAIN_TIMEOUT = 600.0
"""Two tiny GPT-2s train for 3 epochs in seconds alone, in minutes on two busy cores."""


def upload_tokens(http: httpx.Client, content: bytes, filename: str) -> httpx.Response:
    return http.post("/v1/datasets", files={"file": (filename, content)})


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


@pytest.fixture(scope="module")
def trained(alice: httpx.Client) -> dict[str, Any]:
    """A train job: two tiny GPT-2s on the Markov chain from seeds 0 and 1."""
    response = submit(
        alice,
        {
            "kind": "train",
            "dataset": "builtin:markov",
            "params": {"arch": TINY_GPT2, "epochs": 3},
        },
    )
    assert response.status_code == 202, response.text
    job = wait_for_job(alice, response.json()["id"], timeout=TRAIN_TIMEOUT)
    assert job["status"] == "succeeded", job
    return job


def test_a_gpt2_state_dict_uploads_under_the_librarys_keys(alice: httpx.Client) -> None:
    torch.manual_seed(0)
    config = GPT2Config(**TINY_CONFIG, bos_token_id=None, eos_token_id=None)
    state = GPT2LMHeadModel(config).state_dict()
    response = upload_checkpoint(alice, torch_file(state), TINY_GPT2, name="gpt2-tiny")
    assert response.status_code == 201, response.text
    checkpoint = response.json()
    assert checkpoint["arch"]["config"]["n_layer"] == 2
    assert checkpoint["arch"]["input_shape"] == [16]
    stored = read_safetensors(alice.get(f"/v1/checkpoints/{checkpoint['id']}/file").content)
    assert set(stored) == set(state)
    assert torch.equal(stored["lm_head.weight"], state["transformer.wte.weight"])

    # What save_pretrained writes: the tied head left out; it is filled in from the embedding.
    without_head = {key: value for key, value in state.items() if key != "lm_head.weight"}
    response = upload_checkpoint(
        alice, safetensors_file(without_head), TINY_GPT2, filename="model.safetensors"
    )
    assert response.status_code == 201, response.text


def test_an_invalid_transformers_arch_is_refused_with_a_sentence(alice: httpx.Client) -> None:
    response = upload_checkpoint(
        alice, b"unused", {"name": "transformers", "model": "gpt2", "config": {"n_embed": 8}}
    )
    assert response.status_code == 422
    assert response.json()["type"] == "/problems/invalid-arch"
    assert "Close matches: n_embd" in response.json()["detail"]


def test_token_datasets_upload_and_are_listed_as_tokens(alice: httpx.Client) -> None:
    tokens = np.random.default_rng(0).integers(0, 12, (40, 16), dtype=np.int32)
    for content, filename in (
        (npz(x=tokens), "tokens.npz"),
        (save_numpy_safetensors({"x": tokens + 1}), "tokens.safetensors"),
    ):
        response = upload_tokens(alice, content, filename)
        assert response.status_code == 201, response.text
        dataset = response.json()
        assert dataset["kind"] == "tokens"
        assert dataset["input_shape"] == [16] and dataset["num_examples"] == 40
        assert dataset["stored_bytes"] > 8 * tokens.size
    assert dataset["num_classes"] == int(tokens.max()) + 2
    builtins = {item["id"]: item for item in alice.get("/v1/datasets").json()["items"]}
    assert builtins["builtin:markov"]["kind"] == "tokens"
    assert builtins["builtin:markov"]["num_classes"] == 16
    assert builtins["builtin:digits"]["kind"] == "labelled"


@pytest.mark.parametrize(
    ("arrays", "phrase"),
    [
        ({"x": np.ones((4, 8), np.float32)}, "token ids must be integers"),
        ({"x": np.full((4, 8), -3, np.int64)}, "negative token ids"),
        ({"x": np.zeros((4, 8, 3), np.int64)}, "must be N x T"),
    ],
)
def test_bad_token_datasets_are_refused(
    alice: httpx.Client, arrays: dict[str, np.ndarray], phrase: str
) -> None:
    response = upload_tokens(alice, npz(**arrays), "tokens.npz")
    assert response.status_code == 422
    assert response.json()["type"] == "/problems/invalid-dataset"
    assert phrase in response.json()["detail"]


def test_a_model_and_data_of_different_tasks_are_refused_at_submission(
    alice: httpx.Client, trained: dict[str, Any]
) -> None:
    model_a, model_b = (artifact["checkpoint_id"] for artifact in trained["artifacts"])
    refusals = [
        (
            {
                "kind": "analyze",
                "model_a": model_a,
                "model_b": model_b,
                "dataset": "builtin:digits",
            },
            "is a language model",
        ),
        (
            {
                "kind": "train",
                "dataset": "builtin:digits",
                "params": {"arch": TINY_GPT2, "epochs": 1},
            },
            "is a language model",
        ),
    ]
    mlp = upload_mlp(alice, [16, 8, 10], 5)
    refusals.append(
        (
            {"kind": "interpolate", "model_a": mlp, "model_b": mlp, "dataset": "builtin:markov"},
            "holds token sequences",
        )
    )
    wide = np.random.default_rng(1).integers(0, 40, (8, 16))
    wide_ref = upload_tokens(alice, npz(x=wide), "wide.npz").json()["id"]
    refusals.append(
        (
            {"kind": "analyze", "model_a": model_a, "model_b": model_b, "dataset": wide_ref},
            f"token ids up to {int(wide.max())} but the transformers arch's vocabulary has 16",
        )
    )
    for body, phrase in refusals:
        response = submit(alice, body)
        assert response.status_code == 422, response.text
        assert response.json()["type"] == "/problems/invalid-dataset"
        assert phrase in response.json()["detail"]


def test_a_train_job_learns_the_markov_chain_per_next_token(trained: dict[str, Any]) -> None:
    modes = trained["result"]["modes"]
    assert [mode["name"] for mode in modes] == ["model_0", "model_1"]
    for mode in modes:
        # Chance is 15/16; the chain's own most likely next token errs about 0.52 of the time.
        assert 0.48 < mode["test_error"] < 0.6, mode
        assert 0.48 < mode["train_error"] < 0.6, mode
    assert trained["artifacts"][0]["checkpoint_id"] != trained["artifacts"][1]["checkpoint_id"]


SITES = ("add", "mlp.act", "add#2")
"""Per block: the stream after attention's addition, the MLP activation, the block's output."""


def test_interpolate_and_analyze_jobs_run_on_two_gpt2s(
    alice: httpx.Client, trained: dict[str, Any]
) -> None:
    model_a, model_b = (artifact["checkpoint_id"] for artifact in trained["artifacts"])
    interpolated = run_job(
        alice,
        {"kind": "interpolate", "model_a": model_a, "model_b": model_b, "params": {"alpha": 0.5}},
    )
    assert interpolated["result"]["batch_norm_reestimated"] is False
    mixed_id = interpolated["artifacts"][0]["checkpoint_id"]
    mixed = read_safetensors(alice.get(f"/v1/checkpoints/{mixed_id}/file").content)
    assert torch.equal(mixed["lm_head.weight"], mixed["transformer.wte.weight"])

    analysis = run_job(
        alice,
        {
            "kind": "analyze",
            "model_a": model_a,
            "model_b": model_b,
            "dataset": "builtin:markov",
            "params": {"max_examples": 256, "alphas": [0, 0.5, 1], "llfc_alphas": [0.5]},
        },
    )["result"]
    lmc = analysis["pairs"]["naive"]["lmc"]
    endpoint_errors = [analysis["endpoints"]["b"]["error"], analysis["endpoints"]["a"]["error"]]
    assert [lmc["error"][0], lmc["error"][-1]] == endpoint_errors
    assert all(0.45 < error < 0.65 for error in endpoint_errors)
    assert analysis["pairs"]["naive"]["llfc"]["layers"] == [
        *(f"transformer.h.{block}.{site}" for block in (0, 1) for site in SITES),
        "logits",
    ]
    assert analysis["settings"]["num_examples"] == 256


def test_two_gpt2s_are_matched_by_heads_over_http(
    alice: httpx.Client, trained: dict[str, Any]
) -> None:
    model_a, model_b = (artifact["checkpoint_id"] for artifact in trained["artifacts"])
    analysis = run_job(
        alice,
        {
            "kind": "analyze",
            "model_a": model_a,
            "model_b": model_b,
            "dataset": "builtin:markov",
            "params": {
                "max_examples": 256,
                "alphas": [0, 0.5, 1],
                "llfc_alphas": [0.5],
                "match": "weight",
                "symmetry": "orthogonal",
            },
        },
    )["result"]
    assert analysis["matching"]["function_check"]["passed"] is True
    assert analysis["matching"]["symmetry"]["head_orders"] == 2
    naive, matched = analysis["pairs"]["naive"], analysis["pairs"]["matched"]
    assert matched["lmc"]["loss_barrier"] < naive["lmc"]["loss_barrier"]
