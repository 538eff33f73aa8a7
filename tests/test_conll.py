"""CoNLL-style token-classification files (common/conll.py): what is read, and the one-line error
for each kind of broken file. The first step of NER (issue 31): nothing trains on them yet."""

from __future__ import annotations

from pathlib import Path

import pytest
from seqeval.metrics.sequence_labeling import get_entities

from common.conll import Sentences, entity_spans, read_conll, redact_sentences, tag_set_of, to_iob2
from common.errors import FedSiloError

NCBI = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ncbi_disease"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "site.conll"
    path.write_text(text)
    return path


def test_sentences_tags_and_entities(tmp_path):
    data = read_conll(write(tmp_path, "-DOCSTART-\tO\n\nAPC\tO\nis\tO\ncolon\tB-Disease\ncancer\tI-Disease\n\n\n"
                                      "Mary\tB-PER\nsmiled\tO\n"))
    assert data.tokens == [["APC", "is", "colon", "cancer"], ["Mary", "smiled"]]
    assert tag_set_of(data) == ("O", "B-Disease", "I-Disease", "B-PER")
    assert entity_spans(data.tags[0]) == [("Disease", 2, 4)] and entity_spans(data.tags[1]) == [("PER", 0, 1)]
    assert len(data.subset([1])) == 1 and data.subset([1]).tags == [["B-PER", "O"]]


@pytest.mark.parametrize("text, fragment", [
    ("", "no sentences"),
    ("\n\n \n", "no sentences"),
    ("colon\tB-Disease\tx\n", "site.conll:1: expected 'token<TAB>tag', found 3"),
    ("colon B-Disease\n", "site.conll:1: expected 'token<TAB>tag', found 1"),
    ("a\tO\n\tB-PER\n", "site.conll:2: expected 'token<TAB>tag', found 2 tab-separated field(s) with an empty one"),
    ("a\tO\ncolon\tDisease\n", "site.conll:2: tag 'Disease' is neither O nor B-TYPE / I-TYPE"),
    ("a\tO\ncancer\tI-Disease\n", "site.conll:2: I-Disease follows O: in IOB2 (BIO) an entity starts with B-"),
    ("Mary\tB-PER\ncancer\tI-Disease\n", "I-Disease follows B-PER"),
    ("a\tO\n" * 2001, "a sentence of more than 2000 tokens"),
])
def test_a_broken_file_is_one_line_naming_it(tmp_path, text, fragment):
    with pytest.raises(FedSiloError) as err:
        read_conll(write(tmp_path, text))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_iob1_files_are_read_and_converted(tmp_path):
    data = read_conll(write(tmp_path, "a\tO\ncolon\tI-Disease\ncancer\tI-Disease\nand\tO\nflu\tI-Disease\n"), "iob1")
    assert to_iob2(data.tags[0]) == ["O", "B-Disease", "I-Disease", "O", "B-Disease"]


@pytest.mark.skipif(not NCBI.is_dir(), reason="../shared/data/ncbi_disease is not on this machine")
def test_ncbi_disease_reads_as_published_and_spans_agree_with_seqeval():
    counts = {split: len(read_conll(NCBI / f"{split}.conll")) for split in ("train", "dev", "test")}
    assert counts == {"train": 5432, "dev": 923, "test": 940}  # ../shared/data/README.md
    test = read_conll(NCBI / "test.conll")
    assert tag_set_of(test) == ("O", "B-Disease", "I-Disease")
    for tags in test.tags:
        assert entity_spans(tags) == [(kind, start, end + 1) for kind, start, end in get_entities(tags)]


def test_redaction_replaces_tokens_and_keeps_every_tag_in_place():
    data = Sentences([["Mail", "mary.jones@example.com", "about", "cystic", "fibrosis", "on", "12/03/2024", "."]],
                     [["O", "O", "O", "B-Disease", "I-Disease", "O", "O", "O"]])
    clean, counts = redact_sentences(data, ("EMAIL", "DATE"))
    assert clean.tokens == [["Mail", "[EMAIL]", "about", "cystic", "fibrosis", "on", "[DATE]", "."]]
    assert clean.tags == data.tags and counts == {"EMAIL": 1, "DATE": 1}
    # A name that is itself an entity keeps its tag on the placeholder.
    people = Sentences([["Dr", "Mary", "Johnson", "smiled"]], [["O", "B-PER", "I-PER", "O"]])
    clean, counts = redact_sentences(people, ("NAME",))
    assert clean.tokens[0][1:3] == ["[NAME]", "[NAME]"] and clean.tags == people.tags and counts["NAME"] == 1
