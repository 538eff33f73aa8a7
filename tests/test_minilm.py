"""The real embedded all-MiniLM-L6-v2: a short local fine-tune at one site actually learns."""

import numpy as np
import pytest

from client.site import site_data
from client.train import evaluate_local, train_local
from common.batching import encode
from common.config import RunConfig
from common.model import build_model, load_tokenizer
from tests.helpers import LABELS

pytestmark = pytest.mark.slow


def test_embedded_minilm_fine_tunes_with_lora(demo_dir):
    cfg = RunConfig.from_dict({"labels": LABELS, "batch-size": 16, "max-length": 64, "local-epochs": 2})
    site = site_data(cfg, {"site": "A", "data-path": str(demo_dir / "site-A.tsv")})
    tokenizer = load_tokenizer(cfg.model)
    model = build_model(cfg)
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    train = encode(tokenizer, site.train.texts, cfg.max_length, site.train_labels)
    held_out = encode(tokenizer, site.eval.texts, cfg.max_length, site.eval_labels)
    loss_before, _ = evaluate_local(model, held_out, tokenizer.pad_token_id, 4)
    train_local(model, train, cfg, tokenizer.pad_token_id, seed=0)
    loss_after, confusion = evaluate_local(model, held_out, tokenizer.pad_token_id, 4)
    accuracy = np.trace(confusion) / confusion.sum()
    assert loss_after < loss_before - 0.1, (loss_before, loss_after)
    assert accuracy > 0.7, confusion
