import numpy as np
import pytest
import torch
from sklearn.metrics import classification_report

from common.batching import collate, encode, length_sorted_batches
from common.config import RunConfig
from common.errors import FedSiloError
from common.model import (
    HEAD_FILE,
    build_model,
    check_model,
    final_model_digest,
    get_weights,
    load_classifier,
    load_tokenizer,
    optimizer_groups,
    save_classifier_atomic,
    set_weights,
    trainable_names,
)
from server.report import report_dict, report_text


def cfg_for(model_dir, **extra):
    return RunConfig.from_dict({"model": str(model_dir), "labels": "a,b,c", **extra})


def test_lora_trains_only_adapters_and_head(tiny_model):
    model = build_model(cfg_for(tiny_model))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "classifier" in n for n in names)
    assert any("classifier" in n for n in names)
    total = sum(p.numel() for p in model.parameters())
    assert sum(w.size for w in get_weights(model)) < total / 5


def test_same_seed_same_initial_weights_and_set_weights_round_trip(tiny_model):
    a = build_model(cfg_for(tiny_model))
    torch.rand(1000)  # whatever the process drew before, the seed decides the initial weights
    b = build_model(cfg_for(tiny_model))
    wa, wb = get_weights(a), get_weights(b)
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb))
    moved = [w + 1.0 for w in wa]
    set_weights(b, moved)
    assert all(np.array_equal(x, y) for x, y in zip(get_weights(b), moved))


def test_set_weights_rejects_wrong_count_and_shape(tiny_model):
    model = build_model(cfg_for(tiny_model))
    weights = get_weights(model)
    with pytest.raises(FedSiloError, match="tensors, expected"):
        set_weights(model, weights[:-1])
    with pytest.raises(FedSiloError, match="does not fit"):
        set_weights(model, [np.zeros((1, 1), np.float32)] + weights[1:])


def test_padding_to_the_batch_gives_the_same_logits_as_padding_to_max(tiny_model):
    cfg = cfg_for(tiny_model)
    model, tok = build_model(cfg).eval(), load_tokenizer(cfg.model)
    texts = ["short", "a somewhat longer text with more tokens in it", "mid length text"]
    enc = encode(tok, texts, 64)
    dynamic = model(**collate(enc, [0, 1, 2], tok.pad_token_id)).logits
    full = tok(texts, padding="max_length", max_length=64, return_tensors="pt")
    padded = model(input_ids=full["input_ids"], attention_mask=full["attention_mask"]).logits
    assert collate(enc, [0, 2], tok.pad_token_id)["input_ids"].shape[1] == max(len(enc.ids[0]), len(enc.ids[2]))
    torch.testing.assert_close(dynamic, padded, atol=1e-5, rtol=1e-4)


def test_length_sorted_batches_group_similar_lengths(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    enc = encode(tok, ["a " * n for n in (30, 1, 20, 2, 10, 3)], 64)
    batches = length_sorted_batches(enc, 2)
    lengths = [[len(enc.ids[i]) for i in b] for b in batches]
    assert lengths == sorted(lengths) and sorted(sum(map(list, batches), [])) == list(range(6))


def test_final_model_loads_and_predicts_the_same(tiny_model, tmp_path):
    cfg = cfg_for(tiny_model)
    model, tok = build_model(cfg), load_tokenizer(cfg.model)
    set_weights(model, [w + 0.05 for w in get_weights(model)])  # non-zero LoRA B: merge matters
    batch = collate(encode(tok, ["hello there", "a longer text than the first"], 32), [0, 1], tok.pad_token_id)
    before = model.eval()(**batch).logits
    target = save_classifier_atomic(model, tok, tmp_path / "final-model")
    loaded = load_classifier(target)
    torch.testing.assert_close(loaded(**batch).logits, before, atol=1e-4, rtol=1e-4)
    assert loaded.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    digest = final_model_digest(target)  # covers the head too: changing it changes the digest
    loaded.classifier.bias.data += 1.0
    save_classifier_atomic(loaded, tok, target)
    assert final_model_digest(target) != digest


def test_final_model_with_a_broken_head_file_is_one_clear_error(tiny_model, tmp_path):
    cfg = cfg_for(tiny_model)
    target = save_classifier_atomic(build_model(cfg), load_tokenizer(cfg.model), tmp_path / "final-model")
    (target / HEAD_FILE).write_bytes(b"not safetensors")
    with pytest.raises(FedSiloError, match="no readable classifier.safetensors"):
        load_classifier(target)


def test_head_reads_the_masked_mean_of_the_last_hidden_states(tiny_model):
    model = build_model(cfg_for(tiny_model, trainable="full")).eval()
    tok = load_tokenizer(str(tiny_model))
    enc = encode(tok, ["short", "a much longer text, so the first one is padded"], 64)
    batch = collate(enc, [0, 1], tok.pad_token_id)
    batch.pop("labels", None)
    hidden = model.encoder(**batch).last_hidden_state
    real = len(enc.ids[0])
    mean = hidden[0, :real].mean(dim=0)
    # head-init stats (the default): the head reads the mean L2-normalised, as its statistics were
    expected = model.classifier(mean / mean.norm())
    torch.testing.assert_close(model(**batch).logits[0], expected, atol=1e-5, rtol=1e-4)
    raw = build_model(cfg_for(tiny_model, trainable="full", **{"head-init": "none"})).eval()
    torch.testing.assert_close(raw(**batch).logits[0], raw.classifier(mean), atol=1e-5, rtol=1e-4)


def test_the_head_gets_its_own_learning_rate(tiny_model):
    model = build_model(cfg_for(tiny_model))
    adapters, head = optimizer_groups(model, 1e-3, 3e-2)
    assert {id(p) for p in head["params"]} == {id(p) for p in model.classifier.parameters()}
    assert head["lr"] == 3e-2 and adapters["lr"] == 1e-3
    assert len(adapters["params"]) + len(head["params"]) == len(trainable_names(model))


def test_head_mode_trains_only_the_classifier(tiny_model):
    model = build_model(cfg_for(tiny_model, trainable="head"))
    assert trainable_names(model) == ["classifier.weight", "classifier.bias"]
    assert sum(w.size for w in get_weights(model)) == 3 * 32 + 3  # hidden 32, 3 labels


def test_unknown_model_is_one_clear_error_offline():
    with pytest.raises(FedSiloError, match="cannot load model 'nobody/no-such-bert'"):
        check_model("nobody/no-such-bert")


def test_report_matches_sklearn_on_expanded_predictions():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    confusion = np.zeros((3, 3), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    ours = report_dict(confusion, ("a", "b", "c"))
    ref = classification_report(y_true, y_pred, target_names=["a", "b", "c"], output_dict=True)
    for key in ("a", "b", "c", "macro avg", "weighted avg"):
        for metric in ("precision", "recall", "f1-score", "support"):
            assert ours[key][metric] == pytest.approx(ref[key][metric])
    assert ours["accuracy"] == pytest.approx(ref["accuracy"])
    text = report_text(confusion, ("a", "b", "c"))
    assert "macro avg" in text and " 200\n" in text
