"""The person-name tagger (common/name_tagger.py) inside redaction: it finds names the rules cannot
(no context word, no known first name), leaves placeholders and form labels alone, and a damaged
weights file stops the site with one line instead of redacting less."""

from __future__ import annotations

import base64
import json

import pytest

import common.name_tagger as name_tagger
from common.errors import FedSiloError
from common.pii_patterns import FINDERS
from common.redaction import Redactor, find_pii, find_pii_all


def names(text: str) -> list[str]:
    return [text[s.start:s.end] for s in find_pii(text) if s.kind == "NAME"]


@pytest.mark.parametrize("text, value", [
    ("John called", "John"),
    ("yesterday Kwame Mensah phoned about the loan", "Kwame Mensah"),
    ("The transfer to Oluwaseun Adeyemi-Clarke bounced twice.", "Oluwaseun Adeyemi-Clarke"),
    ("Discussed the scan with Okafor and the family.", "Okafor"),
])
def test_names_without_context_are_found_by_the_tagger(text, value):
    assert value not in [text[s:e] for find in FINDERS["NAME"] for s, e in find(text)]  # the rules miss it
    assert names(text) == [value]


def test_titles_and_form_labels_are_trimmed_or_left_alone():
    assert names("seen by Dr Smith today") == ["Smith"]
    assert names("DOB: 12/03/1961, Ward 4, MRN pending") == []


def test_redacting_twice_changes_nothing():
    redactor = Redactor()
    once, counts = redactor.redact("Kwame Mensah and Priya Patel met Dr Okafor on 3 May 2024.")
    assert counts["NAME"] == 3 and "Kwame" not in once and "Okafor" not in once
    assert redactor.redact(once) == (once, type(counts)())


def test_batched_and_single_calls_agree():
    texts = ["John called", "the card was declined", "Okafor reviewed the scan with Mary Smith."]
    assert [[(s.start, s.end, s.kind) for s in spans] for spans in find_pii_all(texts)] == \
        [[(s.start, s.end, s.kind) for s in find_pii(t)] for t in texts]


def test_a_tampered_weights_file_is_one_clear_error(tmp_path, monkeypatch):
    asset = json.loads(name_tagger.ASSET.read_text())
    blob = bytearray(base64.b64decode(asset["weights"]))
    blob[8:40] = b"#" * 32  # the safetensors header, garbled
    for broken in ({**asset, "weights": base64.b64encode(bytes(blob)).decode()},
                   {**asset, "weights": asset["weights"][: len(asset["weights"]) // 2]},  # cut short
                   {k: v for k, v in asset.items() if k != "threshold"}):  # a field missing
        path = tmp_path / "name_tagger.json"
        path.write_text(json.dumps(broken))
        monkeypatch.setattr(name_tagger, "ASSET", path)
        name_tagger._loaded.cache_clear()
        try:
            with pytest.raises(FedSiloError, match="name tagger"):
                find_pii("John called")
        finally:
            name_tagger._loaded.cache_clear()
