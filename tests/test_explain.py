"""fl-predict --explain: Integrated Gradients (Captum) word attributions, checked against IG's own
completeness property and a model that learned the task; the --html page in a real browser."""

from __future__ import annotations

import json

import pytest
import torch

from common.config import RunConfig
from common.data import read_records
from common.model import build_model, load_tokenizer, save_classifier_atomic
from tests.helpers import LABELS, assert_clean_error, run_cli


@pytest.fixture(scope="module")
def trained_run(tiny_model, demo_dir, tmp_path_factory):
    """A run directory whose final model is the tiny BERT fine-tuned (centrally, briefly) on the
    demo topics: enough for the words of a topic to decide its label."""
    run = tmp_path_factory.mktemp("explain") / "run"
    cfg = RunConfig.from_dict({"model": str(tiny_model), "labels": LABELS, "trainable": "full", "max-length": 32})
    tokenizer, model = load_tokenizer(str(tiny_model)), build_model(cfg, seed=3)
    records = read_records(demo_dir / "all.tsv", "text", "label")
    ids = {name: i for i, name in enumerate(LABELS.split(","))}
    y = torch.tensor([ids[label] for label in records.labels])
    enc = tokenizer(records.texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(4):
        for batch in torch.randperm(len(y)).split(16):
            loss = model(enc["input_ids"][batch], enc["attention_mask"][batch], labels=y[batch]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    run.mkdir()
    save_classifier_atomic(model, tokenizer, run / "final-model")
    (run / "config.json").write_text(json.dumps({"max_length": 32}))
    return run


def explain_cli(run, *texts, extra=()):
    proc = run_cli("fl-predict", run, *[a for t in texts for a in ("--text", t)], "--explain", *extra, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_attributions_name_the_input_words_and_sum_to_the_logit_change(trained_run):
    from server.predict import load_final_model

    text = "Hello, my credit card is blocked. Please help."
    row = explain_cli(trained_run, text, extra=("--steps", 200))[0]
    exp = row["explanation"]
    assert [w["word"] for w in exp["words"]] == ["Hello", ",", "my", "credit", "card", "is", "blocked", ".",
                                                  "Please", "help", "."]
    assert all(text[w["start"]:w["end"]] == w["word"] for w in exp["words"])
    # Completeness: the attributions add up to logit(input) - logit(all words -> [PAD]), computed here.
    tokenizer, model = load_final_model(trained_run)
    model.eval()
    enc = tokenizer(text, return_tensors="pt", return_special_tokens_mask=True)
    base = torch.where(enc["special_tokens_mask"].bool(), enc["input_ids"], torch.full_like(enc["input_ids"], 0))
    target = model.config.label2id[row["label"]]
    with torch.no_grad():
        change = float(model(enc["input_ids"], enc["attention_mask"]).logits[0, target]
                       - model(base, enc["attention_mask"]).logits[0, target])
    total = sum(w["attribution"] for w in exp["words"])
    assert total == pytest.approx(change, abs=0.02 * abs(change) + 1e-3), (total, change, exp["delta"])
    assert abs(exp["delta"]) < 0.02 * abs(change) + 1e-3


def test_the_words_of_the_topic_carry_the_decision(trained_run):
    rows = explain_cli(trained_run, "Hi team, my credit card is blocked.", "Dear bank, my mortgage seems too high.")
    assert [r["label"] for r in rows] == ["card", "loan"], rows
    assert "card" in rows[0]["explanation"]["toward"][:3], rows[0]["explanation"]
    assert "mortgage" in rows[1]["explanation"]["toward"][:3], rows[1]["explanation"]
    for r in rows:  # toward and against are disjoint and ordered by strength
        words = {w["word"]: w["attribution"] for w in r["explanation"]["words"]}
        assert all(words[w] > 0 for w in r["explanation"]["toward"])
        assert all(words[w] < 0 for w in r["explanation"]["against"])


def test_explain_refuses_what_it_cannot_do(trained_run, tmp_path):
    assert_clean_error(run_cli("fl-predict", trained_run, "--text", "x", "--html", tmp_path / "a.html"), "--explain")
    assert_clean_error(run_cli("fl-predict", trained_run, "--text", "x", "--explain", "--steps", 0), "--steps")
    (tmp_path / "file").write_text("")
    assert_clean_error(run_cli("fl-predict", trained_run, "--text", "x", "--explain", "--html",
                               tmp_path / "file" / "a.html"), "cannot write")


def test_html_page_colours_the_words_in_a_browser(trained_run, tmp_path, browser):
    hostile = 'my card <script>document.title="owned"</script> <img src=x onerror="document.title=\'owned\'">'
    texts = ["Hi team, my credit card is blocked.", hostile]
    page = tmp_path / "why.html"
    rows = explain_cli(trained_run, *texts, extra=("--html", page))
    browser.get(page.as_uri())
    assert browser.title.startswith("FedSilo") and browser.find_elements("css selector", "script") == []
    assert browser.find_elements("css selector", "img") == []
    for i, (text, row) in enumerate(zip(texts, rows)):
        block = browser.find_element("id", f"text-{i}")
        assert block.text == text  # the text as it was, escaped, nothing dropped
        spans = block.find_elements("css selector", "span.word")
        assert [s.text for s in spans] == [w["word"] for w in row["explanation"]["words"]]
        strongest = max(row["explanation"]["words"], key=lambda w: abs(w["attribution"]))
        shown = next(s for s in spans if s.text == strongest["word"])
        colour = shown.value_of_css_property("background-color")
        assert colour.startswith("rgba(0, 140, 60" if strongest["attribution"] > 0 else "rgba(200, 30, 30"), colour
