"""Language models: Hugging Face's GPT-2 built from its config alone, token datasets, the
next-token task, and two tiny GPT-2s trained on the built-in Markov chain and analysed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy_safetensors
from safetensors.torch import load as load_safetensors_bytes
from support.gpt2 import TINY_CONFIG, TINY_GPT2
from transformers import GPT2Config, GPT2LMHeadModel

from llfc_core.analysis import AnalysisConfig, analyze_pair
from llfc_core.archs import parse_arch
from llfc_core.checkpoints import safetensors_bytes, validate_state_dict
from llfc_core.data import (
    MARKOV_VOCAB,
    digits,
    fit_to_arch,
    inspect_array_file,
    load_builtin,
    markov,
    markov_chain,
    open_normalised,
    read_arrays,
    token_dataset,
    write_normalised,
)
from llfc_core.errors import (
    ArchitectureError,
    CheckpointFormatError,
    CheckpointMismatchError,
    DatasetError,
)
from llfc_core.features import watch_features
from llfc_core.footprint import analysis_memory, training_memory
from llfc_core.models import load_model
from llfc_core.permutation import StateDict
from llfc_core.repair import interpolate_checkpoint
from llfc_core.tasks import CLASSIFICATION, NEXT_TOKEN
from llfc_core.training import TrainConfig, evaluate, train_modes

CPU = torch.device("cpu")
LIBRARY_CONFIG = GPT2Config(**TINY_CONFIG, bos_token_id=None, eos_token_id=None)
CHANCE_ERROR = 1 - 1 / MARKOV_VOCAB


def chain_error(dataset: Any) -> float:
    """The next-token error of the Markov chain's own most likely successor: the best any
    model can do on average."""
    best_next = torch.from_numpy(markov_chain()).argmax(1)
    tokens = dataset.x
    return float((best_next[tokens[:, :-1]] != tokens[:, 1:]).double().mean())


@pytest.fixture(scope="module")
def trained_pair() -> tuple[StateDict, StateDict]:
    arch = parse_arch(TINY_GPT2)
    state_a, state_b = train_modes(arch, markov("train"), TrainConfig(epochs=3, seed=0), device=CPU)
    return state_a, state_b


# --- The arch --------------------------------------------------------------------------------


def test_checkpoint_keys_are_gpt2lmheadmodels_own_keys_in_its_order() -> None:
    arch = parse_arch(TINY_GPT2)
    library = GPT2LMHeadModel(LIBRARY_CONFIG).state_dict()
    assert list(arch.build().state_dict()) == list(library)
    assert arch.expected_shapes() == {key: tuple(value.shape) for key, value in library.items()}
    assert "transformer.h.1.attn.c_attn.weight" in library and "lm_head.weight" in library
    assert arch.input_shape == (16,) and arch.num_classes == 16
    assert arch.task is NEXT_TOKEN and parse_arch({"name": "mlp", "widths": [4, 2]}).task is (
        CLASSIFICATION
    )


def test_the_model_reads_token_ids_and_computes_the_library_models_logits() -> None:
    arch = parse_arch(TINY_GPT2)
    torch.manual_seed(0)
    library = GPT2LMHeadModel(LIBRARY_CONFIG).eval()
    model = load_model(arch, library.state_dict(), CPU)
    tokens = torch.randint(0, 16, (3, 16))
    with torch.inference_mode():
        logits = model(tokens)
        assert type(logits) is torch.Tensor and logits.shape == (3, 16, 16)
        torch.testing.assert_close(logits, library(input_ids=tokens).logits)


def test_the_arch_json_is_normalised_with_every_config_default() -> None:
    arch = parse_arch({**TINY_GPT2, "input_shape": [8]})
    described = arch.to_json()
    assert described["config"]["n_inner"] is None
    assert described["config"]["activation_function"] == "gelu_new"
    assert described["input_shape"] == [8]
    assert parse_arch(described) == arch
    assert arch.num_params() == sum(p.numel() for p in GPT2LMHeadModel(LIBRARY_CONFIG).parameters())


@pytest.mark.parametrize(
    ("spec", "phrase"),
    [
        ({"model": "gpt3"}, "builds only the model 'gpt2' for now, got 'gpt3'. Did you mean gpt2"),
        (
            {"model": "gpt2", "config": {"n_embed": 32}},
            "does not take 'n_embed'. Close matches: n_embd",
        ),
        ({"model": "gpt2", "config": {"bos_token_id": 0}}, "It takes activation_function, "),
        (
            {"model": "gpt2", "config": {"n_embd": 33}},
            r"n_embd \(33\) must be a multiple of n_head",
        ),
        ({"model": "gpt2", "config": {"vocab_size": 0}}, "'vocab_size' must be an integer from 1"),
        (
            {"model": "gpt2", "config": {"n_layer": 10_000}},
            "'n_layer' must be an integer from 1 to 256",
        ),
        (
            {"model": "gpt2", "config": {"attn_pdrop": 2}},
            "'attn_pdrop' must be a number from 0 to 1",
        ),
        ({"model": "gpt2", "config": {"activation_function": "prelu"}}, "must be one of gelu_new"),
        ({"model": "gpt2", "config": "small"}, "'config' must be a JSON object"),
        ({"model": "gpt2", "input_shape": [2048]}, r"length \(at least 2, at most n_positions\)"),
        ({"model": "gpt2", "input_shape": [1]}, r"length \(at least 2, at most n_positions\)"),
        ({"model": "gpt2", "input_shape": [3, 8]}, "must be \\[T\\], one sequence length"),
        ({"model": "gpt2", "kwargs": {}}, "does not take 'kwargs'"),
    ],
)
def test_invalid_transformers_archs_are_refused_with_a_sentence(
    spec: dict[str, Any], phrase: str
) -> None:
    with pytest.raises(ArchitectureError, match=phrase):
        parse_arch({"name": "transformers", **spec})


def test_the_parameter_cap_counts_on_the_meta_device() -> None:
    huge = {"name": "transformers", "model": "gpt2", "config": {"n_embd": 8192, "n_head": 64}}
    with pytest.raises(ArchitectureError, match="more than the limit of 200,000,000"):
        parse_arch(huge, max_params=200_000_000)


def test_a_checkpoint_without_the_tied_head_is_completed_and_unequal_tied_tensors_refused() -> None:
    arch = parse_arch(TINY_GPT2)
    state = arch.build().state_dict()
    # What save_pretrained writes: the head, tied to the token embedding, left out.
    without_head = {key: value for key, value in state.items() if key != "lm_head.weight"}
    completed = validate_state_dict(arch, without_head)
    assert torch.equal(completed["lm_head.weight"], completed["transformer.wte.weight"])
    assert set(load_safetensors_bytes(safetensors_bytes(completed))) == set(state)
    unequal = {**state, "lm_head.weight": state["lm_head.weight"] + 1}
    with pytest.raises(CheckpointFormatError, match=r"tied tensors differ: lm_head\.weight and"):
        validate_state_dict(arch, unequal)
    untied = parse_arch({**TINY_GPT2, "config": {**TINY_CONFIG, "tie_word_embeddings": False}})
    assert validate_state_dict(untied, unequal)["lm_head.weight"].sum() != 0


def test_the_attention_masks_older_releases_saved_are_dropped_like_the_library_does() -> None:
    arch = parse_arch(TINY_GPT2)
    state = arch.build().state_dict()
    old = dict(state)
    for block in (0, 1):
        old[f"transformer.h.{block}.attn.bias"] = torch.tril(
            torch.ones(1, 1, 16, 16, dtype=torch.bool)
        )
        old[f"transformer.h.{block}.attn.masked_bias"] = torch.tensor(-1e4)
    assert set(validate_state_dict(arch, old)) == set(state)
    # Only those: a stray tensor of a similar name is still refused.
    stray = {**state, "transformer.h.0.attn.bias_extra": torch.zeros(1)}
    with pytest.raises(
        CheckpointMismatchError, match=r"unexpected transformer\.h\.0\.attn\.bias_extra"
    ):
        validate_state_dict(arch, stray)


# --- Token datasets --------------------------------------------------------------------------


def test_the_markov_builtin_is_fixed_and_listed_as_tokens() -> None:
    train, again = markov("train"), load_builtin("markov", "train")
    assert torch.equal(train.x, again.x) and train.kind == "tokens"
    assert train.x.shape == (4096, 16) and markov("test").x.shape == (1024, 16)
    assert train.num_classes == 16
    assert not torch.equal(train.x[:1024], markov("test").x)
    assert 0.45 < chain_error(markov("test")) < 0.6


@pytest.mark.parametrize("file_format", ["npz", "safetensors"])
def test_token_files_are_normalised_to_int64_and_read_back(
    tmp_path: Path, file_format: str
) -> None:
    tokens = np.random.default_rng(0).integers(0, 50, (30, 12), dtype=np.uint16)
    path = tmp_path / f"tokens.{file_format}"
    if file_format == "npz":
        np.savez(path, x=tokens)
    else:
        save_numpy_safetensors({"x": tokens}, str(path))
    arrays = inspect_array_file(path)
    assert arrays.kind == "tokens" and arrays.input_shape == (12,)
    normalised = tmp_path / "normalised.safetensors"
    with normalised.open("wb") as sink:
        assert write_normalised(arrays, sink) == int(tokens.max()) + 1
    assert normalised.stat().st_size == arrays.normalised_bytes
    opened = open_normalised(normalised, max_examples=20, name="ds_1")
    assert opened.kind == "tokens" and opened.x.dtype == torch.int64
    assert torch.equal(opened.x, torch.from_numpy(tokens[:20].astype(np.int64)))
    assert opened.y is opened.x
    assert torch.equal(read_arrays(path).x, torch.from_numpy(tokens.astype(np.int64)))


@pytest.mark.parametrize(
    ("arrays", "phrase"),
    [
        ({"x": np.ones((4, 8), np.float32)}, r"no array 'y' \(it holds: x\).*must be integers"),
        ({"x": np.full((4, 8), -1, np.int64)}, "negative token ids"),
        ({"x": np.zeros((4, 8, 2), np.int64)}, r"must be N x T .*got shape \(4, 8, 2\)"),
        ({"x": np.zeros((4, 1), np.int64)}, "next-token prediction needs at least 2"),
        (
            {"x": np.full((4, 8), 2_000_000, np.int64)},
            "token ids are indices into the vocabulary below 1,000,000",
        ),
        ({"x": np.zeros((0, 8), np.int64)}, "holds no examples"),
    ],
)
def test_bad_token_files_are_refused(
    tmp_path: Path, arrays: dict[str, np.ndarray], phrase: str
) -> None:
    for path in (tmp_path / "tokens.npz", tmp_path / "tokens.safetensors"):
        if path.suffix == ".npz":
            np.savez(path, **arrays)  # type: ignore[arg-type]
        else:
            save_numpy_safetensors(arrays, str(path))
        with pytest.raises(DatasetError, match=phrase):
            read_arrays(path)


def test_the_arch_and_the_data_must_be_of_one_task() -> None:
    gpt2, mlp = parse_arch(TINY_GPT2), parse_arch({"name": "mlp", "widths": [16, 8, 10]})
    with pytest.raises(DatasetError, match=r"is a language model.*holds labelled examples"):
        fit_to_arch(gpt2, digits("test"))
    with pytest.raises(DatasetError, match=r"holds token sequences.*is a classifier"):
        fit_to_arch(mlp, markov("test"))
    with pytest.raises(DatasetError, match="token ids up to 99 but the transformers arch's"):
        fit_to_arch(gpt2, token_dataset(torch.full((2, 8), 99)))
    with pytest.raises(DatasetError, match="negative token ids"):
        fit_to_arch(gpt2, token_dataset(torch.full((2, 8), -1)))
    with pytest.raises(DatasetError, match="sequences of 2 to 16 tokens"):
        fit_to_arch(gpt2, token_dataset(torch.zeros((2, 17))))
    shorter = token_dataset(torch.zeros((2, 8)))
    assert fit_to_arch(gpt2, shorter) is shorter


# --- Next-token training and analysis --------------------------------------------------------


def test_next_token_loss_and_error_score_position_t_against_token_t_plus_1() -> None:
    tokens = torch.tensor([[1, 2, 3]])
    # Logits that predict token t + 1 perfectly at every position t < 2, and nonsense at t = 2.
    logits = torch.full((1, 3, 4), -30.0)
    logits[0, 0, 2] = logits[0, 1, 3] = 30.0
    logits[0, 2, 0] = 30.0
    loss, errors = NEXT_TOKEN.summed(logits, tokens)
    assert NEXT_TOKEN.predictions(tokens) == 2
    assert int(errors) == 0 and float(loss) < 1e-20
    assert float(NEXT_TOKEN.mean_loss(logits.roll(1, dims=1), tokens)) > 50


def test_two_tiny_gpt2s_learn_the_markov_chain_to_its_own_error(
    trained_pair: tuple[StateDict, StateDict],
) -> None:
    arch = parse_arch(TINY_GPT2)
    test = markov("test")
    best = chain_error(test)
    for state in trained_pair:
        loss, error = evaluate(arch, state, test, device=CPU)
        # Chance is 15/16 and no model beats the chain itself (0.52) by more than sampling noise;
        # a loss scoring each position against its own token would reach 0 by copying.
        assert best - 0.02 < error < best + 0.08, error
        assert loss < 0.7 * math.log(MARKOV_VOCAB)
    assert not torch.equal(trained_pair[0]["lm_head.weight"], trained_pair[1]["lm_head.weight"])
    for state in trained_pair:
        assert torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])


def test_training_a_language_model_with_dropout_is_reproducible() -> None:
    arch = parse_arch(TINY_GPT2)
    data = markov("train").limit(256)
    config = TrainConfig(epochs=1, seed=3)
    (first,) = train_modes(arch, data, config, num_modes=1, device=CPU)
    (second,) = train_modes(arch, data, config, num_modes=1, device=CPU)
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_the_path_between_two_gpt2s_is_measured_per_next_token(
    trained_pair: tuple[StateDict, StateDict],
) -> None:
    arch = parse_arch(TINY_GPT2)
    state_a, state_b = trained_pair
    test = markov("test").limit(256)
    result = analyze_pair(arch, state_a, state_b, test, AnalysisConfig(), device=CPU).to_json()
    lmc = result["pairs"]["naive"]["lmc"]
    assert lmc["loss"][-1] == pytest.approx(evaluate(arch, state_a, test, device=CPU)[0])
    assert lmc["error"][0] == pytest.approx(evaluate(arch, state_b, test, device=CPU)[1])
    assert lmc["loss_barrier"] > 0 and result["endpoints"]["a"]["error"] < 0.6
    # Condition II on every linear map, GPT-2's transposed Conv1D layers included.
    layers = result["pairs"]["naive"]["commutativity_layers"]
    assert layers[:4] == [
        "transformer.h.0.attn.c_attn",
        "transformer.h.0.attn.c_proj",
        "transformer.h.0.mlp.c_fc",
        "transformer.h.0.mlp.c_proj",
    ]
    assert layers[-1] == "lm_head" and len(layers) == 9
    assert all(value > 0 for value in result["pairs"]["naive"]["commutativity"])

    mixed = interpolate_checkpoint(arch, state_a, state_b, 0.5)
    assert torch.equal(mixed["lm_head.weight"], mixed["transformer.wte.weight"])
    _, error = evaluate(arch, mixed, test, device=CPU)
    assert lmc["error"][5] == pytest.approx(error)


def test_llfc_features_are_taken_per_token_and_flattened_per_example(
    trained_pair: tuple[StateDict, StateDict],
) -> None:
    # Every block's MLP activation is a feature layer of shape (N, T, 4 n_embd), beside the
    # residual stream after each addition (N, T, n_embd).
    arch = parse_arch({**TINY_GPT2, "config": {**TINY_CONFIG, "activation_function": "relu"}})
    test = markov("test").limit(64)
    state_a, state_b = trained_pair
    result = analyze_pair(arch, state_a, state_b, test, AnalysisConfig(), device=CPU).to_json()
    llfc = result["pairs"]["naive"]["llfc"]
    assert llfc["layers"] == [
        "transformer.h.0.add",
        "transformer.h.0.mlp.act",
        "transformer.h.0.add#2",
        "transformer.h.1.add",
        "transformer.h.1.mlp.act",
        "transformer.h.1.add#2",
        "logits",
    ]

    features: dict[str, list[torch.Tensor]] = {"a": [], "b": []}
    logits = {}
    for side, state in (("a", state_a), ("b", state_b)):
        model = load_model(arch, state, CPU)

        def keep(name: str, _: torch.Tensor, output: torch.Tensor, side: str = side) -> None:
            features[side].append(output)

        with (
            torch.inference_mode(),
            watch_features(model, relus=["transformer.h.0.mlp.act"], on_relu=keep),
        ):
            logits[side] = model(test.x)
    assert features["a"][0].shape == (64, 16, 128)
    for layer, (a, b) in (
        ("transformer.h.0.mlp.act", (features["a"][0], features["b"][0])),
        ("logits", (logits["a"], logits["b"])),
    ):
        flat_a, flat_b = a.reshape(64, -1).double(), b.reshape(64, -1).double()
        cosine = (flat_a * flat_b).sum(1) / (flat_a.norm(dim=1) * flat_b.norm(dim=1))
        expected = float((1 - cosine).mean())
        assert llfc["cos_ab"][llfc["layers"].index(layer)] == pytest.approx(expected, rel=1e-5)


def test_memory_estimates_need_no_permutation_spec_without_matching() -> None:
    arch = parse_arch(TINY_GPT2)
    assert training_memory(arch, 128, 2).total > 0
    assert analysis_memory(arch, 256, "none", [0.0, 0.5, 1.0]).total > 0
