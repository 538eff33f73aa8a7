"""The privacy ledger's file: its format, the hash chain of its entries, its signature, and the
anchors the site's audit log keeps of it. What the ledger means is in client/ledger.py.

Document (JSON, written whole by atomic rename):

    format            "fedsilo-privacy-ledger/2"
    ledger_id         random hex, fixed when the ledger is created; names it in audit anchors
    accountant, delta what the epsilon totals are computed with (delta: the latest entry's)
    dataset_fingerprint, records    the data as of the latest entry
    record_digests    optional: base64 of the sorted truncated HMAC-SHA256 of every record, keyed
                      with a key derived from the site's signing key (counts changes, reveals no text)
    entries           [{run_id, round, noise_multiplier, sample_rate, steps, epsilon_total, delta,
                        dataset_fingerprint, records, time, prev}]; `prev` is the hash of the entry
                      before it (of the ledger id for the first), so the last hash pins them all
    key_id, public_key, signature   ECDSA P-256 over the canonical form of everything else;
                      null in an unsigned ledger (written without a key: tests, old callers)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections import Counter
from itertools import islice
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from common.audit import canonical, key_id, load_public_key, openssh_public, trust, verify_log
from common.errors import FedSiloError
from common.files import atomic_write_json

FORMAT = "fedsilo-privacy-ledger/2"
LEGACY_FORMAT = "fedsilo-privacy-ledger/1"  # unsigned and unchained: read, upgraded at the next charge
SIGNED_FIELDS = ("key_id", "public_key", "signature")
_ECDSA = ec.ECDSA(hashes.SHA256())
_HEX64 = re.compile(r"[0-9a-f]{64}")
DIGEST_BYTES = 8  # 64 bits: collisions among a site's records are out of reach


def new_ledger_id() -> str:
    return secrets.token_hex(16)


def genesis(ledger_id: str) -> str:
    """The `prev` of the first entry: binds the chain to this ledger, so entries cannot be spliced in."""
    return hashlib.sha256(f"{FORMAT}:{ledger_id}".encode()).hexdigest()


def entry_hash(entry: dict) -> str:
    return hashlib.sha256(canonical(entry)).hexdigest()


def head_of(entries: list[dict], ledger_id: str) -> str:
    return entry_hash(entries[-1]) if entries else genesis(ledger_id)


def read_doc(path: Path) -> dict | None:
    """The ledger document as stored, or None when there is no file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FedSiloError(f"privacy ledger {path} is unreadable or corrupted ({err}); "
                           "restore it from a backup: it is never reset automatically") from None
    if not isinstance(doc, dict) or doc.get("format") not in (FORMAT, LEGACY_FORMAT):
        raise FedSiloError(f"{path} is not a FedSilo privacy ledger ({FORMAT})")
    return doc


def upgrade_legacy(doc: dict) -> dict:
    """A /1 ledger seen as an unsigned /2 one: its entries chained in order, under an id taken
    from its content (the same at every read until the next charge writes it)."""
    ledger_id, entries = hashlib.sha256(canonical(doc)).hexdigest()[:32], doc.get("entries")
    if isinstance(entries, list) and all(isinstance(e, dict) for e in entries):
        chained, prev = [], genesis(ledger_id)
        for old in entries:  # /1 kept these once for the whole ledger; /2 keeps them per entry
            entry = {"delta": doc.get("delta"), "dataset_fingerprint": doc.get("dataset_fingerprint"),
                     "records": doc.get("records"), "run_id": "", "time": "", **old, "prev": prev}
            chained.append(entry)
            prev = entry_hash(entry)
        entries = chained
    return {**doc, "format": FORMAT, "ledger_id": ledger_id, "entries": entries, **dict.fromkeys(SIGNED_FIELDS)}


def check_signature(doc: dict, path: Path, site_key: ec.EllipticCurvePrivateKey | None) -> bool:
    """True if the ledger is signed and the signature holds; False if unsigned; FedSiloError if
    it is signed with another key or was changed after signing. Without the site's key the
    ledger's own public key is used: that shows accidents, not a forger with a key of his own."""
    if doc.get("signature") is None:
        return False
    if site_key is not None:
        public = site_key.public_key()
        if doc.get("key_id") != key_id(public):
            raise FedSiloError(f"privacy ledger {path} is signed with another key ({doc.get('key_id')}), not this "
                               f"site's ({key_id(public)}): it is not this site's ledger; restore it from a backup")
    else:
        try:
            public = load_public_key(str(doc.get("public_key")))
        except FedSiloError:
            raise FedSiloError(f"privacy ledger {path} has no valid public key; restore it from a backup") from None
    try:
        signature = base64.b64decode(str(doc["signature"]), validate=True)
        public.verify(signature, canonical(_unsigned(doc)), _ECDSA)
    except (ValueError, InvalidSignature):
        raise FedSiloError(f"privacy ledger {path}: its signature does not verify, so it was changed after the site "
                           "signed it (entries cut, edited or reordered, or the signature replaced); "
                           "restore it from a backup") from None
    return True


def sign(doc: dict, site_key: ec.EllipticCurvePrivateKey | None) -> dict:
    if site_key is None:
        return {**doc, **dict.fromkeys(SIGNED_FIELDS)}
    public = site_key.public_key()
    doc = {**doc, "key_id": key_id(public), "public_key": openssh_public(public)}
    signature = site_key.sign(canonical(_unsigned(doc)), _ECDSA)
    return {**doc, "signature": base64.b64encode(signature).decode("ascii")}


def _unsigned(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "signature"}


def check_chain(entries: list[dict], ledger_id: str, path: Path) -> None:
    prev = genesis(ledger_id)
    for number, entry in enumerate(entries, 1):
        if entry["prev"] != prev:
            raise FedSiloError(f"privacy ledger {path}: entry {number} does not follow the one before it "
                               "(entries were removed, reordered or edited); restore it from a backup")
        prev = entry_hash(entry)


def write_doc(path: Path, doc: dict) -> None:
    try:
        atomic_write_json(path, doc)
    except OSError as err:
        raise FedSiloError(f"cannot write privacy ledger {path} ({err.strerror}); the round is refused") from None


# ------------------------------------------------------------------ per-record digests
def record_digests(records, site_key: ec.EllipticCurvePrivateKey) -> str:
    """Keyed digests of every record, sorted (order is not information the ledger needs)."""
    secret = site_key.private_numbers().private_value.to_bytes(32, "big")
    key = hashlib.sha256(b"fedsilo-ledger-record-digests/1\0" + secret).digest()
    digests = sorted(hmac.new(key, f"{text}\x1f{label}".encode("utf-8"), hashlib.sha256).digest()[:DIGEST_BYTES]
                     for text, label in zip(records.texts, records.labels))
    return base64.b64encode(b"".join(digests)).decode("ascii")


def digest_changes(before: str, after: str) -> tuple[int, int]:
    """(records new since `before`, records gone since then), duplicates counted."""
    def counts(packed: str) -> Counter:
        raw = base64.b64decode(packed)
        return Counter(raw[i:i + DIGEST_BYTES] for i in range(0, len(raw), DIGEST_BYTES))
    old, new = counts(before), counts(after)
    return sum((new - old).values()), sum((old - new).values())


# ------------------------------------------------------------------ audit anchors
def read_anchors(audit_log: Path, site_key: ec.EllipticCurvePrivateKey | None) -> list[dict]:
    """Every ledger anchor ({"ledger", "ledger_id", "entries", "head"}) the site's audit log holds,
    after verifying the log (with the site's key when given). A damaged log is an error: anchors
    after a damaged record could have been removed."""
    if not audit_log.exists():
        return []
    result = verify_log(audit_log, trust(site_key.public_key()) if site_key is not None else None)
    if not result.ok:
        raise FedSiloError(f"the site's audit log {audit_log} does not verify at record {result.first_bad} "
                           f"({result.reason}); the privacy ledger is checked against it: "
                           f"check it with `fl-audit verify {audit_log}`")
    anchors = []
    with open(audit_log, "rb") as fh:
        for raw in islice(fh, result.records):  # only records verify_log checked
            anchor = json.loads(raw)["data"].get("ledger")
            if (isinstance(anchor, dict) and isinstance(anchor.get("ledger"), str)
                    and isinstance(anchor.get("ledger_id"), str) and type(anchor.get("entries")) is int
                    and anchor["entries"] >= 1
                    and isinstance(anchor.get("head"), str) and _HEX64.fullmatch(anchor["head"])):
                anchors.append(anchor)
    return anchors
