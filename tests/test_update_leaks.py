"""What one site's update reveals to a curious server when SecAgg+ is off: the README's leak table.

Real rounds (tests/site_rounds.py: the real ServerApp and ClientApp, three sites, the tiny BERT)
with SecAgg+ off and the sites' consent, for each trainable set ('full', 'lora', 'head') with
DP-SGD and without. The attacker reads site A's plain update, as the server receives it, and tries:

  * the words in the site's data: which rows of the word-embedding matrix moved. Without DP,
    AdamW moves exactly the rows of the tokens in the site's training split (a zero gradient
    leaves a row where it was), so the server reads the site's vocabulary, rare words included.
    Under DP-SGD every row gets noise; the attacker takes the rows that moved most, as many as
    there are true tokens, and does no better than chance. 'lora' and 'head' send no embedding rows.
  * the label shares: site A holds mostly one class (its file keeps every 'loan' record and one
    in five of the others); the head's bias moves toward the class a site holds most, and the
    attacker names the class whose bias rose most.

The table printed with -s is the one the README shows; the asserts hold the defaults to it.
"""

from __future__ import annotations

import numpy as np
import pytest

from common.model import build_model, load_tokenizer
from tests.site_rounds import PII_ROW, run_round

CASES = [(t, dp) for t in ("full", "lora", "head") for dp in (False, True)]


def named_update(rnd, site: str) -> dict[str, np.ndarray]:
    """Site's flat update cut back into its named tensors (the packing order is the parameter order)."""
    model = build_model(rnd.cfg)
    update, out, at = rnd.deltas[site], {}, 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            out[name], at = update[at:at + p.numel()].reshape(p.shape), at + p.numel()
    assert at == len(update)
    return out


def token_attack(update: dict[str, np.ndarray], truth: set[int]) -> dict | None:
    """Precision / recall of the token set the attacker reads from the embedding rows that moved."""
    rows = next((u for n, u in update.items() if n.endswith("word_embeddings.weight")), None)
    if rows is None:
        return None
    moved = np.abs(rows).sum(axis=1)
    guessed = set(np.flatnonzero(moved > 0).tolist())
    if len(guessed) > 2 * len(truth):  # everything moved (noise): take the rows that moved most
        guessed = set(np.argsort(-moved)[: len(truth)].tolist())
    hits = len(guessed & truth)
    return {"precision": hits / max(len(guessed), 1), "recall": hits / len(truth),
            "chance": len(truth) / rows.shape[0], "moved_rows": int((moved > 0).sum()), "rows": rows.shape[0]}


def label_attack(update: dict[str, np.ndarray], labels: np.ndarray) -> bool:
    """Does the class whose head bias rose most match the site's most frequent training class?"""
    bias = next(u for n, u in update.items() if n.endswith("classifier.bias"))
    return int(np.argmax(bias)) == int(np.argmax(np.bincount(labels, minlength=len(bias))))


@pytest.fixture(scope="module")
def skewed_dir(demo_dir, tmp_path_factory):
    """The demo sites, with site A's labels skewed toward 'loan'."""
    out = tmp_path_factory.mktemp("skewed")
    for name in "ABC":
        rows = (demo_dir / f"site-{name}.tsv").read_text().splitlines()
        if name == "A":
            rows = rows[:1] + [r for i, r in enumerate(rows[1:]) if r.endswith("\tloan") or i % 5 == 0]
        (out / f"site-{name}.tsv").write_text("\n".join(rows) + "\n")
    return out


@pytest.fixture(scope="module")
def leak_rounds(tiny_model, skewed_dir, tmp_path_factory):
    return {(t, dp): run_round(tiny_model, skewed_dir, tmp_path_factory.mktemp(f"{t}-{dp}"), secure=False,
                               trainable=t, dp=dp)
            for t, dp in CASES}


def test_one_plain_update_reveals_what_the_table_says(leak_rounds):
    table = {}
    for (trainable, dp), rnd in leak_rounds.items():
        update = named_update(rnd, "A")
        table[trainable, dp] = (token_attack(update, rnd.train_tokens["A"]),
                                label_attack(update, rnd.train_labels["A"]))
    print("\ntrainable | DP  | tokens read from embedding rows (precision / recall; chance) | majority label read")
    for (trainable, dp), (tokens, label) in table.items():
        words = ("none travel" if tokens is None else
                 f"{tokens['precision']:.2f} / {tokens['recall']:.2f}; chance {tokens['chance']:.3f}")
        print(f"{trainable:9} | {'on' if dp else 'off':3} | {words} | {'yes' if label else 'no'}")

    off, on = table["full", False][0], table["full", True][0]
    # Full fine-tuning without DP hands the server the site's exact vocabulary.
    assert off["precision"] == 1.0 and off["recall"] == 1.0
    # Under DP-SGD every row moves, and the rows that moved most are no better than chance.
    assert on["moved_rows"] == on["rows"]
    assert on["precision"] < 5 * on["chance"] + 0.05
    # LoRA and head-only training send no embedding rows at all.
    assert table["lora", False][0] is None and table["head", False][0] is None
    # Without DP the head's bias names the site's largest class.
    assert all(table[t, False][1] for t in ("full", "lora", "head"))


def test_a_redacted_name_is_not_among_the_words_the_server_reads(leak_rounds):
    # Site A holds a record with a person's name; redaction replaced it before training, so even
    # the leakiest setting (full fine-tuning, no DP, no SecAgg+) does not move its rows.
    rnd = leak_rounds["full", False]
    tokenizer = load_tokenizer(rnd.cfg.model)
    name_ids = set(tokenizer("Johnson")["input_ids"][1:-1])
    assert name_ids and not name_ids & rnd.train_tokens["A"]
    assert "Johnson" in PII_ROW
    update = named_update(rnd, "A")
    rows = next(u for n, u in update.items() if n.endswith("word_embeddings.weight"))
    assert all(not rows[i].any() for i in name_ids)
