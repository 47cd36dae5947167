"""Attention's symmetries derived from the graph: heads reordered together, query/key and
value/output dimensions permuted within each head, fused projections split, and every derived
spec proved by random permutations (which would fail if any of it were wrong)."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
import torch.nn.functional as F
from support.vit import VIT_DIGITS
from torch import nn

from llfc_core.archs import parse_arch
from llfc_core.errors import SymmetryProofError
from llfc_core.permutation import Nesting, random_permutation, split_nested
from llfc_core.symmetry import check_proof, derive_symmetry
from llfc_core.symmetry.derive import DerivedSymmetry
from llfc_core.symmetry.report import inspect_report, prove_arch, randomised_model

HEADS, HEAD_SIZE, WIDTH = 4, 8, 32


def small_vit(**kwargs: object) -> nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=8,
        patch_size=2,
        in_chans=1,
        num_classes=10,
        embed_dim=WIDTH,
        depth=2,
        num_heads=HEADS,
        **kwargs,
    ).eval()


def vit_symmetry(**kwargs: object) -> DerivedSymmetry:
    return derive_symmetry(small_vit(**kwargs), (1, 8, 8))


class EagerAttention(nn.Module):
    """Multi-head self-attention written out with matmul and softmax, separate q/k/v layers,
    between two residual MLP-free blocks: the same symmetries in another spelling."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, WIDTH)
        self.query = nn.Linear(WIDTH, WIDTH)
        self.key = nn.Linear(WIDTH, WIDTH)
        self.value = nn.Linear(WIDTH, WIDTH)
        self.out = nn.Linear(WIDTH, WIDTH)
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stream = self.embed(x)
        batch, tokens, _ = stream.shape
        q = self.query(stream).view(batch, tokens, HEADS, HEAD_SIZE).transpose(1, 2)
        k = self.key(stream).view(batch, tokens, HEADS, HEAD_SIZE).transpose(1, 2)
        v = self.value(stream).view(batch, tokens, HEADS, HEAD_SIZE).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) * HEAD_SIZE**-0.5
        mixed = scores.softmax(dim=-1) @ v
        merged = mixed.transpose(1, 2).reshape(batch, tokens, WIDTH)
        stream = stream + self.out(merged)
        return self.head(F.relu(stream).mean(dim=1))


def test_a_vit_has_one_stream_permutation_and_nested_heads_sharing_their_order() -> None:
    symmetry = vit_symmetry()
    spec = symmetry.spec
    assert set(symmetry.sizes) == {
        "P_patch_embed.proj",
        "P_blocks.0.attn.qkv[0:32]",
        "P_blocks.0.attn.qkv[64:96]",
        "P_blocks.0.mlp.fc1",
        "P_blocks.1.attn.qkv[0:32]",
        "P_blocks.1.attn.qkv[64:96]",
        "P_blocks.1.mlp.fc1",
    }
    order = "H_blocks.0.attn.qkv[0:32]"
    assert spec.nested["P_blocks.0.attn.qkv[0:32]"] == Nesting(order, HEADS, HEAD_SIZE)
    assert spec.nested["P_blocks.0.attn.qkv[64:96]"] == Nesting(order, HEADS, HEAD_SIZE)
    # The fused projection's rows: queries and keys share one nested permutation, values another.
    composite = spec.axes_to_perm["blocks.0.attn.qkv.weight"][0]
    assert composite is not None
    assert [segment.perm for segment in spec.composites[composite]] == [
        "P_blocks.0.attn.qkv[0:32]",
        "P_blocks.0.attn.qkv[0:32]",
        "P_blocks.0.attn.qkv[64:96]",
    ]
    assert spec.axes_to_perm["blocks.0.attn.proj.weight"] == (
        "P_patch_embed.proj",
        "P_blocks.0.attn.qkv[64:96]",
    )
    for key in ("cls_token", "pos_embed", "blocks.1.norm2.weight", "norm.bias"):
        assert spec.axes_to_perm[key][-1] == "P_patch_embed.proj"
    assert [(axis.key, axis.axis) for axis in symmetry.unpermuted] == [
        ("head.weight", 0),
        ("head.bias", 0),
    ]
    # Features are tokens x units: activation matching reads the units on the last axis.
    assert spec.perm_to_features["P_blocks.0.mlp.fc1"] == ("blocks.0.mlp.act",)
    assert spec.feature_axes["blocks.0.mlp.act"] == 2


def test_random_nested_permutations_move_whole_heads_alike_in_query_key_and_value() -> None:
    spec = vit_symmetry().spec
    state = small_vit().state_dict()
    perm = random_permutation(spec, state, seed=3)
    qk = spec.nested["P_blocks.0.attn.qkv[0:32]"]
    order_qk, within_qk = split_nested(perm["P_blocks.0.attn.qkv[0:32]"], qk)
    order_vo, within_vo = split_nested(perm["P_blocks.0.attn.qkv[64:96]"], qk)
    assert torch.equal(order_qk, order_vo)
    assert sorted(order_qk.tolist()) == list(range(HEADS))
    assert not torch.equal(order_qk, torch.arange(HEADS))
    for within in (*within_qk, *within_vo):
        assert sorted(within.tolist()) == list(range(HEAD_SIZE))
    assert not torch.equal(within_qk, within_vo)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vit_spec_passes_the_proof_with_heads_and_dimensions_permuted(seed: int) -> None:
    model = small_vit()
    assert check_proof(model, vit_symmetry().spec, torch.randn(3, 1, 8, 8), seed=seed) < 1e-5


def test_a_spec_whose_values_keep_their_own_head_order_fails_the_proof() -> None:
    # Were the value heads free to move apart from the query/key heads, outputs would change:
    # the proof must see it and name the order that broke it.
    model = small_vit()
    spec = vit_symmetry().spec
    split_orders = dict(spec.nested)
    name = "P_blocks.0.attn.qkv[64:96]"
    split_orders[name] = dataclasses.replace(split_orders[name], head_order="H_values")
    broken = dataclasses.replace(spec, nested=split_orders)
    with pytest.raises(SymmetryProofError, match=r"H_values|H_blocks\.0\.attn\.qkv\[0:32\]"):
        check_proof(model, broken, torch.randn(3, 1, 8, 8))


def test_a_per_head_dimension_norm_keeps_query_and_key_dimensions_in_place() -> None:
    # qk_norm: one LayerNorm weight over head_dim, shared by every head; permuting dimensions
    # differently per head would break it, and the nested model has no "heads move, dimensions
    # stay": the attention keeps its heads in place, and says why.
    symmetry = vit_symmetry(qk_norm=True)
    assert "P_blocks.0.attn.qkv[0:32]" not in symmetry.sizes
    assert "P_blocks.0.attn.qkv[64:96]" not in symmetry.sizes
    reasons = {axis.reason for axis in symmetry.unpermuted}
    assert any("shared by every head" in reason for reason in reasons)
    assert check_proof(small_vit(qk_norm=True), symmetry.spec, torch.randn(3, 1, 8, 8)) < 1e-5


def test_attention_spelled_with_matmul_and_separate_projections_is_found_and_proved() -> None:
    torch.manual_seed(0)
    model = EagerAttention().eval()
    symmetry = derive_symmetry(model, (5, 6))
    spec = symmetry.spec
    assert spec.nested["P_query"] == Nesting("H_query", HEADS, HEAD_SIZE)
    assert spec.nested["P_value"] == Nesting("H_query", HEADS, HEAD_SIZE)
    assert spec.axes_to_perm["key.weight"] == ("P_query", "P_embed")
    assert spec.axes_to_perm["out.weight"] == ("P_embed", "P_value")
    assert check_proof(model, spec, torch.randn(4, 5, 6)) < 1e-5


class RmsNormBlock(nn.Module):
    """A pre-norm residual MLP block with RMSNorm, as module and as function."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, WIDTH)
        self.norm = nn.RMSNorm(WIDTH)
        self.up = nn.Linear(WIDTH, 64)
        self.down = nn.Linear(64, WIDTH)
        self.final_gain = nn.Parameter(torch.rand(WIDTH) + 0.5)
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stream = self.embed(x)
        stream = stream + self.down(F.gelu(self.up(self.norm(stream))))
        return self.head(F.rms_norm(stream, (WIDTH,), self.final_gain))


def test_rmsnorm_gains_follow_the_residual_stream() -> None:
    torch.manual_seed(0)
    model = RmsNormBlock().eval()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
    spec = derive_symmetry(model, (5, 6)).spec
    assert spec.axes_to_perm["norm.weight"] == ("P_embed",)
    assert spec.axes_to_perm["final_gain"] == ("P_embed",)
    assert spec.axes_to_perm["up.weight"] == ("P_up", "P_embed")
    assert check_proof(model, spec, torch.randn(4, 5, 6)) < 1e-5


def test_gpt2_traced_for_its_shape_splits_the_transposed_fused_projection() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=2, n_embd=WIDTH, n_head=HEADS, vocab_size=17, n_positions=16, use_cache=False
    )
    config._attn_implementation = "sdpa"

    class Logits(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.transformer = model.transformer
            self.lm_head = model.lm_head
            object.__setattr__(self, "hf", model)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.hf.forward(input_ids=input_ids, use_cache=False).logits

    with torch.device("meta"):
        meta_model = Logits(transformers.GPT2LMHeadModel(config))
    spec = derive_symmetry(meta_model, (16,), torch.long, shape_specific=True).spec
    stream = "P_transformer.wte"
    qk, vo = "P_transformer.h.0.attn.c_attn[0:32]", "P_transformer.h.0.attn.c_attn[64:96]"
    # Conv1D stores inputs x outputs: the pieces are on axis 1.
    weight = spec.axes_to_perm["transformer.h.0.attn.c_attn.weight"]
    assert weight[0] == stream and weight[1] is not None
    assert [segment.perm for segment in spec.composites[weight[1]]] == [qk, qk, vo]
    assert spec.axes_to_perm["transformer.h.0.attn.c_proj.weight"] == (vo, stream)
    assert spec.axes_to_perm["lm_head.weight"] == (None, stream)
    assert spec.axes_to_perm["transformer.wpe.weight"] == (None, stream)
    assert spec.nested[qk].head_order == spec.nested[vo].head_order
    torch.manual_seed(0)
    model = Logits(transformers.GPT2LMHeadModel(config)).eval()
    assert check_proof(model, spec, torch.randint(0, 17, (3, 16))) < 1e-5


def test_the_inspect_report_says_where_activation_matching_sees_each_attention() -> None:
    report = inspect_report(parse_arch(VIT_DIGITS), None)
    observed = {group["name"]: group["observed_at"] for group in report["permutations"]}
    # No feature site shows query, key or value dimensions: the projection's outputs do.
    assert observed["P_blocks.0.attn.qkv[0:32]"] == [
        "blocks.0.attn.qkv[0:32]",
        "blocks.0.attn.qkv[32:64]",
    ]
    assert observed["P_blocks.0.attn.qkv[64:96]"] == ["blocks.0.attn.qkv[64:96]"]
    assert observed["P_blocks.0.mlp.fc1"] == ["blocks.0.mlp.act"]


def test_the_proof_of_a_zero_initialised_head_is_not_vacuous() -> None:
    # timm's "jax" init zeroes the classifier and every bias: every output would be zero and
    # any spec would pass. The proof's model has no all-zero tensor, so its outputs move.
    arch = parse_arch({**VIT_DIGITS, "kwargs": {**VIT_DIGITS["kwargs"], "weight_init": "jax"}})
    assert not arch.build().state_dict()["head.weight"].any()
    model = randomised_model(arch, 0)
    assert all(parameter.any() for parameter in model.parameters())
    assert model(torch.randn(2, 1, 8, 8)).abs().max() > 0
    proof = prove_arch(arch)
    assert proof["passed"] and proof["relative_change"] > 0


class CrossAttention(nn.Module):
    """Queries from one stream, keys and values from another: not self-attention."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, WIDTH)
        self.attention = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stream = self.embed(x)
        memory = 2.0 * stream
        mixed, _ = self.attention(stream, memory, memory, need_weights=False)
        return self.head((stream + mixed).mean(dim=1))


def test_torchvisions_multihead_attention_has_nested_heads_and_passes_the_proof() -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=8, patch_size=4, num_layers=2, num_heads=HEADS, hidden_dim=WIDTH, mlp_dim=64
    ).eval()
    symmetry = derive_symmetry(model, (3, 8, 8))
    spec = symmetry.spec
    attention = "encoder.layers.encoder_layer_0.self_attention"
    qk, vo = f"P_{attention}[0:32]", f"P_{attention}[64:96]"
    assert spec.nested[qk] == Nesting(f"H_{attention}[0:32]", HEADS, HEAD_SIZE)
    assert spec.nested[vo].head_order == spec.nested[qk].head_order
    packed = spec.axes_to_perm[f"{attention}.in_proj_weight"][0]
    assert packed is not None
    assert [segment.perm for segment in spec.composites[packed]] == [qk, qk, vo]
    assert spec.axes_to_perm[f"{attention}.out_proj.weight"][1] == vo
    assert [axis.reason for axis in symmetry.unpermuted] == ["the model's output (logits)"] * 2
    assert check_proof(model, spec, torch.randn(3, 3, 8, 8)) < 1e-5


def test_cross_attention_through_multihead_attention_stays_in_place() -> None:
    torch.manual_seed(0)
    model = CrossAttention().eval()
    symmetry = derive_symmetry(model, (5, 6))
    assert not symmetry.spec.nested
    assert any("MultiheadAttention" in axis.reason for axis in symmetry.unpermuted)
    assert check_proof(model, symmetry.spec, torch.randn(4, 5, 6)) < 1e-5
