"""Shared fixtures: a tiny randomly initialised BERT (with the real tokenizer) and small data."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.demo_data import write_demo


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BERT with random weights and MiniLM's tokenizer, saved to disk."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from common.model import quiet_transformers, resolve_model

    quiet_transformers()
    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(""))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """Three site files of 200 synthetic bank messages (4 topics) and all.tsv with all rows."""
    out = tmp_path_factory.mktemp("demo-data")
    write_demo(out, sites=3, per_site=200, seed=11)
    return out
