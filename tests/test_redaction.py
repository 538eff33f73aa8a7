import json
from collections import Counter

import pytest

from common.demo_data import make_messages
from common.errors import FedSiloError
from tests.pii_synth import evaluate, make_iban, make_notes
from common.pii_patterns import iban_valid, luhn_valid
from common.redaction import ENTITY_TYPES, Redactor, Span, find_pii, load_redaction_config, redact, report_lines


def found(text, kind):
    """The substrings of `text` detected as `kind` (all types enabled, overlaps resolved)."""
    return [text[s.start:s.end] for s in find_pii(text) if s.type == kind]


def only(text):
    """(type, substring) of every detected span."""
    return [(s.type, text[s.start:s.end]) for s in find_pii(text)]


# ---------------------------------------------------------------------------------- per type

@pytest.mark.parametrize("text, value", [
    ("write to mary.johnson@example.org today", "mary.johnson@example.org"),
    ("j_smith+bank@mail.co.uk.", "j_smith+bank@mail.co.uk"),
    ("Mail: Jane.Doe@Example.COM", "Jane.Doe@Example.COM"),
])
def test_email(text, value):
    assert found(text, "EMAIL") == [value]


@pytest.mark.parametrize("text", ["user@localhost", "meet @ noon", "a@b", "price: 5@3.50"])
def test_not_email(text):
    assert found(text, "EMAIL") == []


@pytest.mark.parametrize("text, value", [
    ("Call +44 20 7946 0958 now", "+44 20 7946 0958"),
    ("ring +44 (0)20 7946 0958", "+44 (0)20 7946 0958"),
    ("at (555) 123-4567.", "(555) 123-4567"),
    ("at 555-123-4567", "555-123-4567"),
    ("at 555.123.4567", "555.123.4567"),
    ("toll free 1-800-555-0199", "1-800-555-0199"),
    ("mobiel 06-12345678", "06-12345678"),
    ("Paris 01 23 45 67 89", "01 23 45 67 89"),
    ("+31 6 12345678", "+31 6 12345678"),
    ("0044 20 7946 0958", "0044 20 7946 0958"),
    ("tel. 555-1234", "555-1234"),
])
def test_phone(text, value):
    assert found(text, "PHONE") == [value]


@pytest.mark.parametrize("text", [
    "2024", "in 2024 we paid 1,250,000.00 EUR", "paid $12,500.00", "1.250.000,00 EUR",
    "BP 128/82, 10:30", "order #1234567", "call me at 3pm", "room 101", "DOB 03-14-1962",
    "12 500 000 EUR",
])
def test_not_phone(text):
    assert found(text, "PHONE") == []


@pytest.mark.parametrize("text, value", [
    ("seen on 2024-02-11.", "2024-02-11"),
    ("at 2024-02-11T10:30", "2024-02-11"),
    ("DOB 14/03/1962", "14/03/1962"),
    ("DOB 03/14/1962", "03/14/1962"),
    ("DOB 3/4/62", "3/4/62"),
    ("am 12.03.2024", "12.03.2024"),
    ("on 12 March 2024", "12 March 2024"),
    ("on March 12, 2024", "March 12, 2024"),
    ("on 3rd of March 2024", "3rd of March 2024"),
    ("on Mar 3, 2021", "Mar 3, 2021"),
    ("on 03-Mar-2024", "03-Mar-2024"),
    ("DOB: 14-MAR-1962 ", "14-MAR-1962"),
    ("follow-up on 12 March", "12 March"),
])
def test_date(text, value):
    assert found(text, "DATE") == [value]


@pytest.mark.parametrize("text", [
    "2024", "since 2019", "version 2.1.10", "BP 120/80", "score 15/15", "March 2024 statement",
    "13/13/2024", "10:30:45", "ratio 3/4",
])
def test_not_date(text):
    assert found(text, "DATE") == []


@pytest.mark.parametrize("text, value", [
    ("IBAN DE89370400440532013000 please", "DE89370400440532013000"),
    ("IBAN DE89 3704 0044 0532 0130 00 TO ME", "DE89 3704 0044 0532 0130 00"),
    ("to GB82 WEST 1234 5698 7654 32.", "GB82 WEST 1234 5698 7654 32"),
    ("NL91ABNA0417164300", "NL91ABNA0417164300"),
])
def test_iban(text, value):
    assert found(text, "IBAN") == [value]


def test_not_iban_bad_checksum_and_no_card_inside():
    text = "IBAN DE89 3704 0044 0532 0130 01 and DE88370400440532013000"
    assert not iban_valid("DE89370400440532013001")
    assert only(text) == []


def test_iban_length_must_match_country():
    # valid mod-97 but wrong length for DE: built for another country's length, relabelled
    assert iban_valid("DE89370400440532013000") and not iban_valid("DE8937040044053201300")


def test_generated_ibans_validate():
    import random
    rng = random.Random(3)
    for cc in ("DE", "GB", "FR", "IT", "CH", "PL"):
        assert iban_valid(make_iban(rng, cc))


@pytest.mark.parametrize("text, value", [
    ("card 4111 1111 1111 1111 was declined", "4111 1111 1111 1111"),
    ("card 4111-1111-1111-1111", "4111-1111-1111-1111"),
    ("card 5500000000000004.", "5500000000000004"),
    ("amex 3782 822463 10005", "3782 822463 10005"),
    ("order 12 4111 1111 1111 1111", "4111 1111 1111 1111"),
])
def test_card(text, value):
    assert found(text, "CARD") == [value]


@pytest.mark.parametrize("text", [
    "card 4111 1111 1111 1112 was declined",   # Luhn-invalid 16 digits
    "ref 411111111111",                         # 12 digits
    "ref 41111111111111111111",                 # 20 digits
    "card ending in 1111",
])
def test_not_card(text):
    assert not luhn_valid("4111111111111112")
    assert found(text, "CARD") == []


@pytest.mark.parametrize("text, value", [
    ("SSN 123-45-6789.", "123-45-6789"),
    ("SSN 123 45 6789", "123 45 6789"),
    ("social security number: 123456789", "123456789"),
])
def test_ssn(text, value):
    assert found(text, "SSN") == [value]


@pytest.mark.parametrize("ssn", ["000-12-3456", "666-12-3456", "912-34-5678", "123-00-4567", "123-45-0000"])
def test_not_ssn_outside_ssa_rules(ssn):
    assert found(f"SSN {ssn}", "SSN") == [] and only(f"SSN {ssn}") == []


def test_bare_nine_digits_need_ssn_context():
    assert found("order 123456789", "SSN") == []


@pytest.mark.parametrize("text, value", [
    ("login from 192.168.0.1.", "192.168.0.1"),
    ("from 8.8.8.8:53", "8.8.8.8"),
    ("from 2001:db8::8a2e:370:7334 today", "2001:db8::8a2e:370:7334"),
    ("from fe80::1ff:fe23:4567:890a", "fe80::1ff:fe23:4567:890a"),
    ("localhost ::1", "::1"),
])
def test_ip(text, value):
    assert found(text, "IP") == [value]


@pytest.mark.parametrize("text", ["256.1.1.1", "10.0.0.256", "1.2.3", "version 1.2.3.4", "v1.2.3.4",
                                  "at 10:30:45", "MAC 00:1A:2B:3C:4D:5E", "ratio 1.5"])
def test_not_ip(text):
    assert found(text, "IP") == []


@pytest.mark.parametrize("text, value", [
    ("see https://portal.example.org/p/123?view=labs.", "https://portal.example.org/p/123?view=labs"),
    ("(see www.mybank.com/login)", "www.mybank.com/login"),
    ("http://10.0.0.5:8080/admin", "http://10.0.0.5:8080/admin"),
    ("https://en.wikipedia.org/wiki/Scan_(disambiguation), ok", "https://en.wikipedia.org/wiki/Scan_(disambiguation)"),
])
def test_url(text, value):
    assert found(text, "URL") == [value]


def test_not_url():
    assert found("the web is www and http is a protocol", "URL") == []


@pytest.mark.parametrize("text, value", [
    ("Patient Mary Johnson (MRN: A1234567), DOB", "A1234567"),
    ("medical record number 00123456", "00123456"),
    ("Patient ID: HX2231-09", "HX2231-09"),
    ("hospital no. 7734129", "7734129"),
])
def test_mrn(text, value):
    assert found(text, "MRN") == [value]


def test_not_mrn_without_context_or_digits():
    assert found("the code A1234567 was printed", "MRN") == []
    assert found("MRN pending", "MRN") == []


@pytest.mark.parametrize("text, value", [
    ("passport X12345678 received", "X12345678"),
    ("customer number C-0012345.", "C-0012345"),
    ("my account number is 12345678", "12345678"),
    ("account no. 1234 5678 90 closed", "1234 5678 90"),
    ("ID: AB123456C", "AB123456C"),
    ("ID card number L01X00T47", "L01X00T47"),
])
def test_id(text, value):
    assert found(text, "ID") == [value]


@pytest.mark.parametrize("text", [
    "please bring your ID to the branch", "the account is locked after three attempts",
    "customer service is closed", "passport photo needed", "my account 42",
])
def test_not_id(text):
    assert found(text, "ID") == []


@pytest.mark.parametrize("text, value", [
    ("lives at 12 Oak Street.", "12 Oak Street"),
    ("at 221B Baker St. in", "221B Baker St."),
    ("to 350 5th Avenue, Apt 4B today", "350 5th Avenue, Apt 4B"),
    ("Flat 3, 14 Harbour Road, London SW1A 1AA.", "Flat 3, 14 Harbour Road, London SW1A 1AA"),
    ("at 42 Martin Luther King Blvd, Springfield, IL 62704.", "42 Martin Luther King Blvd, Springfield, IL 62704"),
])
def test_address(text, value):
    assert found(text, "ADDRESS") == [value]


@pytest.mark.parametrize("text", ["Main Street is closed", "He lives on 5th Avenue", "take 2 tablets daily",
                                  "12 Oak trees"])
def test_not_address(text):
    assert found(text, "ADDRESS") == []


@pytest.mark.parametrize("text, value", [
    ("seen by Dr Smith today", "Smith"),
    ("Dr. O'Brien reviewed", "O'Brien"),
    ("Mrs Mary Ann Smith-Jones called", "Mary Ann Smith-Jones"),
    ("Hi, my name is Anna van der Berg.", "Anna van der Berg"),
    ("Patient Kwame Mensah (MRN", "Kwame Mensah"),
    ("Dear Priya,", "Priya"),
    ("Dear Dr McDonald,", "McDonald"),
    ("Regards, Zoe Brown\nBeneficiary: x", "Zoe Brown"),
    ("then Mary Poppins said", "Mary Poppins"),
    ("Mr Müller paid", "Müller"),
    ("Prof. J. Smith", "J. Smith"),
])
def test_name(text, value):
    assert found(text, "NAME") == [value]


@pytest.mark.parametrize("text", [
    "Dear Customer,", "Dear Sir or Madam,", "Dear bank,", "Patient Portal is down", "The patient was seen",
    "Paul Street is closed", "Dr. appointment next week",
])
def test_not_name(text):
    assert found(text, "NAME") == []


# -------------------------------------------------------------------------- overlap, output

def test_spans_sorted_non_overlapping_and_longest_wins():
    text = ("Patient Mary Johnson (MRN: A1234567), DOB 03/14/1962, at 12 Oak Street, card 4111 1111 1111 1111, "
            "IBAN DE89 3704 0044 0532 0130 00, https://x.org/u/mary.johnson@example.org")
    spans = find_pii(text)
    assert spans == sorted(spans, key=lambda s: s.start)
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))
    # the e-mail inside the URL and the digits inside the IBAN lose to the longer span
    assert ("URL", "https://x.org/u/mary.johnson@example.org") in only(text)
    assert ("IBAN", "DE89 3704 0044 0532 0130 00") in only(text)
    assert not any(t in ("EMAIL", "PHONE") for t, _ in only(text))


def test_equal_length_uses_priority():
    # an SSN after "ID:" is matched by both recognizers with the same span: SSN wins
    assert only("ID: 123-45-6789") == [("SSN", "123-45-6789")]
    # a patient id is both MRN and ID: MRN wins
    assert only("patient ID A1234567") == [("MRN", "A1234567")]


def test_types_restrict_detection():
    text = "Mail mary.johnson@example.org or call +44 20 7946 0958"
    assert [s.type for s in find_pii(text, ["EMAIL"])] == ["EMAIL"]
    assert [s.type for s in find_pii(text, ("phone",))] == ["PHONE"]  # names are case-insensitive
    assert find_pii(text, ()) == []


def test_redact_placeholders_and_counts():
    text = "Dr Smith (tel. +44 20 7946 0958, smith@clinic.org) saw Mrs Jones on 2024-02-11."
    out, counts = redact(text)
    assert out == "Dr [NAME] (tel. [PHONE], [EMAIL]) saw Mrs [NAME] on [DATE]."
    assert counts == Counter({"NAME": 2, "PHONE": 1, "EMAIL": 1, "DATE": 1})


def test_redact_is_idempotent_on_synthetic_notes():
    redactor = Redactor()
    for text, _ in make_notes(60, seed=5):
        once, _ = redactor.redact(text)
        assert redactor.redact(once) == (once, Counter())


def test_redactor_redact_all_sums_counts():
    out, counts = Redactor(["EMAIL", "IBAN"]).redact_all(
        ["a@b.org and c@d.org", "IBAN DE89370400440532013000, Dr Smith", "nothing here"])
    assert out == ["[EMAIL] and [EMAIL]", "IBAN [IBAN], Dr Smith", "nothing here"]
    assert counts == Counter({"EMAIL": 2, "IBAN": 1})


def test_unknown_type_is_one_line_error():
    with pytest.raises(FedSiloError) as err:
        Redactor(["EMAIL", "PASSWORD"])
    msg = str(err.value)
    assert "PASSWORD" in msg and "\n" not in msg and all(t in msg for t in ENTITY_TYPES)
    with pytest.raises(FedSiloError):
        find_pii("x", ["NAMES"])


def test_plain_texts_are_unchanged():
    plain = ["my card was declined at the shop", "the transfer is still pending",
             "Hello, my account is locked after three attempts. Please help.",
             "The interest rate on my loan seems too high since 2023.",
             "I paid EUR 1,250.00 on my card ending in 4821 at 10:30.",
             "Temperature 38.2 C, BP 128/82, metformin 500 mg twice daily, review in 3 months."]
    for text in plain:
        assert redact(text) == (text, Counter())


def test_demo_messages_are_unchanged():
    texts = [t for t, _ in make_messages(400, seed=2)]
    assert Redactor().redact_all(texts) == (texts, Counter())


def test_report_lines_counts_never_values():
    text = "Dr Smith, smith@clinic.org, +44 20 7946 0958"
    out, counts = Redactor().redact_all([text, "no pii"])
    lines = report_lines(counts, 2)
    joined = "\n".join(lines)
    assert "3 value(s)" in lines[0] and "2 text(s)" in lines[0]
    assert any(line.split() == ["NAME", "1"] for line in lines)
    assert "Smith" not in joined and "clinic" not in joined and "7946" not in joined
    assert report_lines(Counter(), 5)[-1].strip() == "no personal data found"


# ----------------------------------------------------------------------------------- config

def write(tmp_path, content, name="redaction.json"):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def test_config_entities(tmp_path):
    path = write(tmp_path, json.dumps({"entities": ["PHONE", "email", "PHONE"]}))
    assert load_redaction_config(path) == ("EMAIL", "PHONE")


def test_config_disabled_and_defaults(tmp_path):
    assert load_redaction_config(write(tmp_path, '{"enabled": false}')) == ()
    assert load_redaction_config(write(tmp_path, '{"enabled": true}')) == ENTITY_TYPES
    assert load_redaction_config(write(tmp_path, '{"entities": []}')) == ()


@pytest.mark.parametrize("content, expected", [
    ("{not json", "not valid JSON"),
    ('["EMAIL"]', "must be a JSON object"),
    ('{"entities": ["EMAIL", "PASSWORD"]}', "unknown PII type 'PASSWORD'"),
    ('{"entities": "EMAIL"}', "must be a list"),
    ('{"entites": ["EMAIL"]}', "unknown key"),
    ('{"enabled": "no"}', "true or false"),
])
def test_config_errors_name_the_file(tmp_path, content, expected):
    path = write(tmp_path, content)
    with pytest.raises(FedSiloError) as err:
        load_redaction_config(path)
    msg = str(err.value)
    assert str(path) in msg and expected in msg and "\n" not in msg


def test_config_unreadable(tmp_path):
    for path in (tmp_path / "missing.json", tmp_path):  # absent, and a folder
        with pytest.raises(FedSiloError) as err:
            load_redaction_config(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{"entities": ["\xe9"]}')
    with pytest.raises(FedSiloError, match="latin1.json"):
        load_redaction_config(bad)


# ------------------------------------------------------------------------- synthetic notes

def test_make_notes_is_deterministic_and_labelled():
    a, b = make_notes(50, seed=4), make_notes(50, seed=4)
    assert a == b and a != make_notes(50, seed=5)
    for text, spans in a:
        assert all(isinstance(s, Span) and s.type in ENTITY_TYPES and text[s.start:s.end].strip() for s in spans)
        assert all(x.end <= y.start for x, y in zip(spans, spans[1:]))


def test_precision_recall_on_synthetic_notes():
    results = evaluate(n=600, seed=1)
    assert set(results) == set(ENTITY_TYPES)
    for kind in ("EMAIL", "PHONE", "DATE", "IBAN", "CARD", "IP", "URL", "SSN", "MRN", "ID"):
        r = results[kind]
        assert r["support"] >= 30, kind
        assert r["recall"] >= 0.95 and r["precision"] >= 0.9, (kind, r)
    for kind in ("NAME", "ADDRESS"):
        assert results[kind]["recall"] >= 0.8, (kind, results[kind])


def test_evaluate_restricted_types():
    results = evaluate(["IBAN", "CARD"], n=100, seed=2)
    assert set(results) == {"IBAN", "CARD"}
