"""Task ner, piece by piece and in-process: the run option, a site's sentences as records, the
checks on what a site reports, the guarantee's unit, and tagging raw text."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.config import RunConfig
from common.data import LocalDetailError
from common.demo_ner import make_sentences, write_conll
from common.errors import FedSiloError
from common.ner_data import as_sentences, encode_tags, read_sentence_records, redact_records, tag_set
from common.privacy import guarantee_sentence
from server.entity_round import EntityCounts, entity_text, entity_types
from server.predict_ner import words_of
from server.site_reports import Malformed, evaluate_report

TAGS = ("O", "B-Disease", "I-Disease", "B-Drug", "I-Drug")


@pytest.mark.parametrize("options, fragment", [
    ({"head-init": "stats"}, "head-init stats"),
    ({"head-init": "none", "partition": "dirichlet"}, "partition dirichlet"),
    ({"head-init": "none", "sim-group-column": "ward"}, "sim-group-column"),
    ({"head-init": "none", "max-fairness-gap": 0.1}, "max-fairness-gap"),
])
def test_a_ner_run_refuses_what_it_cannot_do(options, fragment):
    with pytest.raises(FedSiloError, match=f"task ner: {fragment}"):
        RunConfig.from_dict({"task": "ner", "labels": ",".join(TAGS), **options})
    assert RunConfig.from_dict({"task": "ner", "labels": ",".join(TAGS), "head-init": "none"}).task == "ner"


def test_fl_sim_and_fl_server_default_to_a_random_head_for_ner():
    import argparse

    from common.config import add_run_options, run_config_from_args

    p = argparse.ArgumentParser()
    add_run_options(p)
    assert run_config_from_args(p.parse_args(["--task", "ner", "--labels", "O,B-X"])).head_init == "none"
    with pytest.raises(FedSiloError, match="head-init stats"):  # asked for explicitly: refused, not changed
        run_config_from_args(p.parse_args(["--task", "ner", "--labels", "O,B-X", "--head-init", "stats"]))


def test_sentences_travel_as_records_and_back(tmp_path):
    sentences = make_sentences(30, seed=3)
    path = write_conll(tmp_path / "s.conll", sentences)
    records = read_sentence_records(path)
    assert len(records) == 30
    back = as_sentences(records)
    assert back.tokens == [[w for w, _ in s] for s in sentences] and back.tags == [[t for _, t in s] for s in sentences]
    assert tag_set(records) == TAGS
    ids = encode_tags(records, TAGS)
    assert [TAGS[i] for i in ids[0]] == back.tags[0]
    with pytest.raises(FedSiloError, match="group column"):
        read_sentence_records(path, group_column="ward")


def test_iob1_files_are_stored_as_iob2(tmp_path):
    path = tmp_path / "iob1.conll"
    path.write_text("aspirin\tI-Drug\nhelps\tO\n\n")
    assert read_sentence_records(path).labels == ["B-Drug O"]


def test_a_tag_outside_the_run_is_refused_without_naming_it_to_the_server(tmp_path):
    path = write_conll(tmp_path / "s.conll", [[("Zorblax", "B-Secret"), ("rises", "O")]])
    records = read_sentence_records(path)
    with pytest.raises(LocalDetailError) as err:
        encode_tags(records, TAGS, "site A", quote_values=False)
    assert "Secret" not in str(err.value) and "B-Secret" in err.value.local_detail


def test_redaction_keeps_every_tag_on_its_word(tmp_path):
    path = write_conll(tmp_path / "s.conll", [[("Call", "O"), ("Mary", "O"), ("Johnson", "O"), ("about", "O"),
                                               ("asthma", "B-Disease"), ("at", "O"), ("mary.j@example.com", "O")]])
    records = read_sentence_records(path)
    texts, counts = redact_records(records, ("NAME", "EMAIL"))
    words = texts[0].split("\t")
    assert len(words) == 7 and words[4] == "asthma" and "Mary" not in words and "mary.j@example.com" not in words
    assert counts["EMAIL"] == 1 and counts["NAME"] >= 1


def reply(confusion, counts, words=None):
    words = int(np.asarray(confusion).sum()) if words is None else words
    return {"site": "A", "confusion": json.dumps(confusion), "entity_counts": json.dumps(counts)}, words, 0.5


GOOD = {"Disease": {"tp": 2, "pred": 3, "true": 3}, "Drug": {"tp": 1, "pred": 1, "true": 2}}
EYE = (np.eye(5, dtype=int) * 4).tolist()  # 20 words


def test_entity_counts_are_summed_and_scored_over_sites():
    types = entity_types(TAGS)
    assert types == ("Disease", "Drug")
    clean, _ = evaluate_report(*reply(EYE, GOOD), 5, types)
    other, _ = evaluate_report(*reply(EYE, {"Disease": {"tp": 1, "pred": 1, "true": 1}}), 5, types)
    counts = EntityCounts()
    counts.add("A", clean)
    counts.add("B", other)
    record = counts.record()
    assert record["entities"]["counts"]["Disease"] == {"tp": 3, "pred": 4, "true": 4}
    micro = record["entities"]["federated"]["micro avg"]  # tp 4, pred 5, true 6
    assert micro["precision"] == pytest.approx(0.8) and micro["recall"] == pytest.approx(4 / 6)
    assert record["entity_f1"] == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))
    assert entity_text(record).startswith("entity-F1 0.727 (P 0.800 R 0.667, 6 entities)")


@pytest.mark.parametrize("counts, words, why", [
    ({"Secret": {"tp": 0, "pred": 1, "true": 1}}, None, "keyed by the run's entity types"),
    ({"Drug": {"tp": 3, "pred": 2, "true": 5}}, None, "more entities found right"),
    ({"Drug": {"tp": 0, "pred": 1}}, None, "exactly tp, pred and true"),
    ({"Drug": {"tp": -1, "pred": 1, "true": 1}}, None, "entity_counts"),
    ({"Drug": {"tp": 1.5, "pred": 2, "true": 2}}, None, "entity_counts"),
    ({"Drug": {"tp": 0, "pred": 21, "true": 1}}, None, "more entities than the 20 words"),
    ("[[[[[[[[[[]]]]]]]]]]", None, "nested"),
])
def test_a_hostile_site_cannot_make_up_entity_counts(counts, words, why):
    metrics, n, loss = reply(EYE, counts, words)
    if isinstance(counts, str):
        metrics["entity_counts"] = counts
    with pytest.raises(Malformed, match=why):
        evaluate_report(metrics, n, loss, 5, entity_types(TAGS))


def test_entity_counts_belong_to_ner_runs_only():
    metrics, n, loss = reply(EYE, GOOD)
    with pytest.raises(Malformed, match="sent in a classification run"):
        evaluate_report(metrics, n, loss, 5)
    del metrics["entity_counts"]
    with pytest.raises(Malformed, match="missing in a NER run"):
        evaluate_report(metrics, n, loss, 5, entity_types(TAGS))


def test_the_guarantee_names_sentences_as_the_unit():
    text = guarantee_sentence("A", 8.0, 1e-5, "prv", 120, 30, task="ner")
    assert "sentence-level (8.00, 1e-05)-differential privacy for its 120 training sentences" in text
    assert "30 held-out evaluation sentences are not covered" in text and "entity counts" in text
    assert "record-level" in guarantee_sentence("A", 8.0, 1e-5, "prv", 120, 30)


def test_words_of_a_raw_text_keep_their_character_spans():
    text = "She took metformin, for type-2 diabetes."
    spans = words_of(text)
    assert [w for w, _, _ in spans] == ["She", "took", "metformin", ",", "for", "type", "-", "2", "diabetes", "."]
    assert all(text[a:b] == w for w, a, b in spans)
