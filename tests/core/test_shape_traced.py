"""A model traced per input shape computes what its source computes, for every shape, and its
weights, state dict and feature sites behave as one model's."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from llfc_core.archs.shape_traced import MAX_SHAPES, ShapeTracedModel
from llfc_core.features import feature_site_names

transformers = pytest.importorskip("transformers")

VOCAB, POSITIONS = 17, 16


class Logits(nn.Module):
    """GPT-2 returning its logits alone, with GPT-2's own state-dict keys."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.transformer = model.transformer
        self.lm_head = model.lm_head
        object.__setattr__(self, "hf", model)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf.forward(input_ids=input_ids, use_cache=False).logits


def gpt2() -> nn.Module:
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=POSITIONS, use_cache=False
    )
    config._attn_implementation = "sdpa"
    return Logits(transformers.GPT2LMHeadModel(config)).eval()


@pytest.fixture(scope="module")
def source_and_traced() -> tuple[nn.Module, ShapeTracedModel]:
    torch.manual_seed(0)
    source = gpt2()
    with torch.device("meta"):
        twin = gpt2()
    return source, ShapeTracedModel(source, twin, (POSITIONS,), torch.long)


def test_every_input_shape_gets_the_sources_outputs(
    source_and_traced: tuple[nn.Module, ShapeTracedModel],
) -> None:
    source, traced = source_and_traced
    assert not traced.training
    for batch, tokens in [(2, POSITIONS), (3, POSITIONS), (5, 9), (1, 1)]:
        ids = torch.randint(0, VOCAB, (batch, tokens))
        assert torch.equal(traced(ids), source(ids))
        assert (batch, tokens) in traced._graphs


def test_training_runs_the_source_whose_forward_reads_the_training_flag(
    source_and_traced: tuple[nn.Module, ShapeTracedModel],
) -> None:
    # Dropout inside attention is fixed off in a graph traced in eval mode; in training mode
    # the model runs its source, on the same parameters, and restores eval mode after.
    _, traced = source_and_traced
    ids = torch.randint(0, VOCAB, (2, POSITIONS))
    traced.train()
    try:
        torch.manual_seed(1)
        first = traced(ids)
        torch.manual_seed(2)
        second = traced(ids)
    finally:
        traced.eval()
    assert not torch.equal(first, second)
    assert torch.equal(traced(ids), traced(ids))


def test_weights_keys_and_loading_are_the_sources(
    source_and_traced: tuple[nn.Module, ShapeTracedModel],
) -> None:
    source, traced = source_and_traced
    assert list(traced.state_dict()) == list(source.state_dict())
    other = copy.deepcopy(traced)
    changed = {key: value + 0.5 for key, value in traced.state_dict().items()}
    other.load_state_dict(changed)
    ids = torch.randint(0, VOCAB, (3, 7))
    assert not torch.allclose(other(ids), traced(ids))
    assert torch.equal(other.state_dict()["lm_head.weight"], changed["lm_head.weight"])


def test_feature_sites_are_in_forward_order_and_seen_for_every_shape(
    source_and_traced: tuple[nn.Module, ShapeTracedModel],
) -> None:
    _, traced = source_and_traced
    sites = feature_site_names(traced)
    assert sites == [
        "transformer.h.0.add",
        "transformer.h.0.mlp.act",
        "transformer.h.0.add#2",
        "transformer.h.1.add",
        "transformer.h.1.mlp.act",
        "transformer.h.1.add#2",
    ]
    seen: list[tuple[str, tuple[int, ...]]] = []
    hooks = [
        traced.get_submodule(name).register_forward_hook(
            lambda _module, _inputs, output, name=name: seen.append((name, tuple(output.shape)))
        )
        for name in sites
    ]
    try:
        for batch in range(1, MAX_SHAPES + 3):
            seen.clear()
            traced(torch.randint(0, VOCAB, (batch, 5)))
            assert [name for name, _ in seen] == sites
            assert seen[1][1] == (batch, 5, 128)
    finally:
        for hook in hooks:
            hook.remove()
