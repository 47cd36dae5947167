"""A GPT-2 decoder small enough for the test suite: 2 blocks of 4 heads of 8 dimensions over a
vocabulary of 16 tokens (the built-in Markov task's) and sequences of 16."""

from __future__ import annotations

from typing import Any

TINY_CONFIG: dict[str, Any] = {
    "vocab_size": 16,
    "n_positions": 16,
    "n_embd": 32,
    "n_layer": 2,
    "n_head": 4,
}
TINY_GPT2: dict[str, Any] = {"name": "transformers", "model": "gpt2", "config": TINY_CONFIG}
