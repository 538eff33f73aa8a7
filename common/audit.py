"""A signed, hash-chained, append-only audit trail: one JSON line per event, one log per node.

Every record names the one before it by hash (`prev`) and is signed with the node's NIST P-256
key, so an edited, deleted, inserted, reordered or torn record is found by `verify_log`.

Record (one line, in canonical form, i.e. exactly `canonical(record)` followed by "\\n"):

    seq     0, 1, 2, ... (the line number)
    time    UTC ISO-8601, e.g. "2025-01-31T12:00:00.123Z" (informative; not checked for order)
    node    who writes this log, e.g. "server" or "site A"; the same on every line
    key_id  "sha256:" + hex SHA-256 of the signing key's DER SubjectPublicKeyInfo
    kind    "log_start" (record 0 only), "run_start", "round", "refusal", "final_model", ...
    data    a JSON object
    prev    hex SHA-256 of the previous record's line (its canonical bytes, `sig` included);
            64 zeros for record 0
    sig     base64 of the DER ECDSA-P256-SHA256 signature over canonical(record without sig)

Record 0 is always kind "log_start" with data {"public_key": "<OpenSSH line>", "version": 1}:
every log carries the key that signs it. That alone only proves the log is consistent with
itself (anyone can write a new consistent log with a key of their own), so an auditor passes
the node's public key as `trusted_keys`, obtained some other way (e.g. at enrolment).

What a chain cannot show: records cut off the END at a line boundary leave a shorter valid log.
Keep `head` (the hash of the last record) somewhere else (e.g. the run summary) and compare.

One writer per log: `AuditLog` does not lock; it notices a log that grew behind its back and
refuses to append. Keys: common/keys.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from common.errors import FedSiloError, printable
from common.files import atomic_write_bytes
# The log signs with these keys; callers import them from here as the audit log's API.
from common.keys import (PrivateKey, PublicKey, generate_key, key_id, load_private_key,  # noqa: F401
                         load_public_key, openssh_public, parse_openssh_public, trust)


FIELDS = ("seq", "time", "node", "key_id", "kind", "data", "prev", "sig")
GENESIS = "0" * 64  # `prev` of record 0
LOG_START = "log_start"
VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"sha256:[0-9a-f]{64}")
_SIGNATURE = ec.ECDSA(hashes.SHA256())


# ---------------------------------------------------------------------------------- records

def canonical(obj) -> bytes:
    """The bytes that are signed and hashed. NaN and Infinity are refused: they are not JSON."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def record_hash(record: dict) -> str:
    """What the next record's `prev` holds: the hash of this record's whole line, `sig` included."""
    return hashlib.sha256(canonical(record)).hexdigest()


def _unsigned(record: dict) -> bytes:
    return canonical({k: v for k, v in record.items() if k != "sig"})


def _sign(record: dict, private_key: PrivateKey) -> dict:
    signature = private_key.sign(_unsigned(record), _SIGNATURE)
    return {**record, "sig": base64.b64encode(signature).decode("ascii")}


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Bad(Exception):
    """One record fails a check; the message is the reason, one line."""


def _parse_line(raw: bytes) -> dict:
    """One line of the file -> a record whose fields are all of the right type, or _Bad."""
    if not raw.endswith(b"\n"):
        # append() writes a record and its newline in one write; a missing newline is a torn
        # write (or a truncated file), even if the JSON happens to be complete.
        raise _Bad("incomplete last line (no newline at the end): a write was cut off or the file truncated")
    body = raw[:-1]
    try:
        record = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise _Bad("not valid UTF-8") from None
    except (ValueError, RecursionError):
        raise _Bad("not valid JSON") from None
    if not isinstance(record, dict):
        raise _Bad("not a JSON object")
    missing = [f for f in FIELDS if f not in record]
    if missing:
        raise _Bad(f"missing field {missing[0]!r}")
    extra = sorted(set(record) - set(FIELDS))
    if extra:
        raise _Bad(f"unexpected field {printable(extra[0])!r}")
    if type(record["seq"]) is not int or record["seq"] < 0:
        raise _Bad("seq is not a non-negative integer")
    for name in ("time", "node", "kind", "key_id", "prev", "sig"):
        if not isinstance(record[name], str):
            raise _Bad(f"{name} is not a string")
    if not isinstance(record["data"], dict):
        raise _Bad("data is not a JSON object")
    if not _HEX64.fullmatch(record["prev"]):
        raise _Bad("prev is not a hex SHA-256")
    if not _KEY_ID.fullmatch(record["key_id"]):
        raise _Bad("key_id is not sha256:<hex>")
    try:
        datetime.fromisoformat(record["time"])
    except ValueError:
        raise _Bad("time is not an ISO-8601 timestamp") from None
    # Only the canonical form is accepted: it rules out duplicate keys (which JSON parsers
    # resolve differently) and makes the hash of the line the hash of the record.
    try:
        same = canonical(record) == body
    except ValueError:
        same = False
    if not same:
        raise _Bad("not in canonical form (the line was re-formatted or has duplicate keys)")
    return record


def _check_signature(record: dict, public_key: PublicKey) -> None:
    try:
        signature = base64.b64decode(record["sig"], validate=True)
    except ValueError:
        raise _Bad("sig is not base64") from None
    try:
        public_key.verify(signature, _unsigned(record), _SIGNATURE)
    except InvalidSignature:
        raise _Bad("signature does not verify: the record was changed after it was signed") from None


def _log_key(record: dict) -> PublicKey:
    """The key a log_start record declares, checked against its key_id."""
    line = record["data"].get("public_key")
    if not isinstance(line, str):
        raise _Bad("log_start has no public_key")
    try:
        # Parsed as a line only: log content must never make the verifier open a file.
        public_key = parse_openssh_public(line.strip().encode("utf-8"), "log_start")
    except (FedSiloError, UnicodeEncodeError):
        raise _Bad("log_start public_key is not an OpenSSH P-256 public key") from None
    if key_id(public_key) != record["key_id"]:
        raise _Bad("log_start public_key does not match its key_id")
    if record["data"].get("version") != VERSION:
        raise _Bad(f"unsupported audit log version {printable(str(record['data'].get('version')))}")
    return public_key


# ------------------------------------------------------------------------------ verifying

@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int  # good records, from the start of the file
    head: str  # hash of the last good record (GENESIS when there is none)
    first_bad: int | None  # 0-based line index of the first bad record
    reason: str  # why it is bad; "" when ok
    key_id: str | None = None  # the log's signing key, from its log_start record
    node: str | None = None


class _Chain:
    """Checks records in file order against everything the records before them fixed."""

    def __init__(self, trusted_keys: dict[str, PublicKey] | None):
        self.trusted = trusted_keys
        self.seq = 0
        self.head = GENESIS
        self.key: PublicKey | None = None
        self.key_id: str | None = None
        self.node: str | None = None

    def add(self, record: dict) -> None:
        if record["seq"] != self.seq:
            raise _Bad(f"seq is {record['seq']}, expected {self.seq}: "
                       "a record was deleted, inserted or moved")
        if record["prev"] != self.head:
            raise _Bad("prev is not the hash of the record before it: "
                       "a record was deleted, inserted, moved or changed")
        if self.seq == 0:
            self._start(record)
        else:
            self._same_signer(record)
        _check_signature(record, self.key)
        self.seq += 1
        self.head = record_hash(record)

    def _start(self, record: dict) -> None:
        if record["kind"] != LOG_START:
            raise _Bad(f"the first record is kind {printable(record['kind'])!r}, not {LOG_START!r}")
        declared = _log_key(record)
        if self.trusted is not None:
            if record["key_id"] not in self.trusted:
                raise _Bad(f"signed by an unknown key {record['key_id']}")
            declared = self.trusted[record["key_id"]]
        self.key, self.key_id, self.node = declared, record["key_id"], record["node"]

    def _same_signer(self, record: dict) -> None:
        # One log, one node, one key: a record from anyone else is an insertion.
        if record["kind"] == LOG_START:
            raise _Bad(f"{LOG_START!r} may only be the first record")
        if record["key_id"] != self.key_id:
            if self.trusted is not None and record["key_id"] in self.trusted:
                raise _Bad(f"signed by key {record['key_id']}, not by this log's key {self.key_id}")
            raise _Bad(f"signed by an unknown key {record['key_id']} (this log's key is {self.key_id})")
        if record["node"] != self.node:
            raise _Bad(f"node {printable(record['node'])!r} in the log of node {printable(self.node)!r}")


def verify_log(path: str | Path, trusted_keys: dict[str, PublicKey] | None = None) -> VerifyResult:
    """Check every record of the log at `path`; stops at the first bad one.

    trusted_keys (key id -> key, see `trust`): the log's key must be one of them. Without it the
    log is checked against the key in its own log_start record, which proves consistency only.
    A missing or unreadable file raises FedSiloError; a damaged one gives ok=False.
    """
    if trusted_keys is not None:
        for name, key in trusted_keys.items():
            if name != key_id(key):
                raise ValueError(f"trusted_keys: {name!r} is not the key id of its key")
    chain = _Chain(trusted_keys)
    index = 0
    try:
        with open(path, "rb") as fh:
            for index, raw in enumerate(fh):  # binary: lines end at b"\n" only, not at U+2028
                try:
                    chain.add(_parse_line(raw))
                except _Bad as bad:
                    return VerifyResult(False, index, chain.head, index, str(bad), chain.key_id, chain.node)
    except FileNotFoundError:
        raise FedSiloError(f"{path}: no such file") from None
    except OSError as err:
        raise FedSiloError(f"{path}: cannot read ({err.strerror or err})") from None
    if chain.seq == 0:
        return VerifyResult(False, 0, GENESIS, 0, "empty log: no log_start record")
    return VerifyResult(True, chain.seq, chain.head, None, "", chain.key_id, chain.node)


def head_hash(path: str | Path, trusted_keys: dict[str, PublicKey] | None = None) -> str:
    """The hash of the log's last record, after verifying the whole log (FedSiloError if damaged)."""
    result = verify_log(path, trusted_keys)
    if not result.ok:
        raise FedSiloError(f"{path}: record {result.first_bad}: {result.reason}")
    return result.head


# -------------------------------------------------------------------------------- writing

class AuditLog:
    """The writer of one node's log. Opening an existing log checks its first and last records
    (written by this node with this key, last line complete and signed) and continues the chain.

    The middle is not re-verified on open (that is verify_log's job, and appending cannot hide
    damage that is already there). A damaged end is never repaired or truncated: the operator
    decides, with `fl-audit verify`. Not for concurrent writers (see the module docstring).
    """

    def __init__(self, path: str | Path, private_key_path: str | Path, node: str):
        if not isinstance(node, str) or not node:
            raise ValueError("node must be a non-empty string")
        self.path = Path(path)
        self.node = node
        self._private_key = load_private_key(private_key_path)
        self.public_key = self._private_key.public_key()
        self.key_id = key_id(self.public_key)
        if self.path.exists():
            self._reopen(private_key_path)
        else:
            self._create()

    @property
    def head(self) -> str:
        """Hash of the last record written: keep it elsewhere to detect a cut-off end later."""
        return self._head

    def append(self, kind: str, data: dict) -> dict:
        """Sign and append one record (flushed and fsynced before returning); return it."""
        if not isinstance(kind, str) or not kind or kind == LOG_START:
            raise ValueError(f"kind must be a non-empty string other than {LOG_START!r}, got {kind!r}")
        record = self._record(kind, _plain_json(data, kind))
        line = canonical(record) + b"\n"
        try:
            with open(self.path, "ab") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size != self._size:
                    raise FedSiloError(
                        f"{self.path}: the audit log is {size} bytes, not the {self._size} this writer "
                        "left: another writer, or an append that failed half-way; nothing appended; "
                        f"check it with `fl-audit verify {self.path}`")
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            raise FedSiloError(f"{self.path}: cannot append to the audit log ({err.strerror or err})") from None
        self._advance(record, len(line))
        return record

    # -- internals

    def _record(self, kind: str, data: dict) -> dict:
        unsigned = {"seq": self._seq, "time": _utc_now(), "node": self.node, "key_id": self.key_id,
                    "kind": kind, "data": data, "prev": self._head}
        return _sign(unsigned, self._private_key)

    def _advance(self, record: dict, nbytes: int) -> None:
        self._seq = record["seq"] + 1
        self._head = record_hash(record)
        self._size += nbytes

    def _create(self) -> None:
        self._seq, self._head, self._size = 0, GENESIS, 0
        record = self._record(LOG_START, {"public_key": openssh_public(self.public_key), "version": VERSION})
        line = canonical(record) + b"\n"
        try:
            # Written whole, then renamed into place: a crash leaves no log or a complete first record.
            atomic_write_bytes(self.path, line)
        except OSError as err:
            raise FedSiloError(f"{self.path}: cannot create the audit log ({err.strerror or err})") from None
        self._advance(record, len(line))

    def _reopen(self, private_key_path) -> None:
        try:
            first, last, size = _first_and_last_lines(self.path)
        except OSError as err:
            raise FedSiloError(f"{self.path}: cannot read the audit log ({err.strerror or err})") from None
        if size == 0:
            raise self._damaged("it is empty (no log_start record)")
        try:
            start = _parse_line(first)
        except _Bad as bad:
            raise self._damaged(f"first record: {bad}") from None
        if start["kind"] != LOG_START:
            raise self._damaged(f"the first record is not {LOG_START!r}")
        if start["key_id"] != self.key_id:
            raise FedSiloError(f"{self.path}: this audit log was started with key {start['key_id']}, "
                               f"not {self.key_id} (the key in {private_key_path})")
        if start["node"] != self.node:
            raise FedSiloError(f"{self.path}: this audit log belongs to node {printable(start['node'])!r}, "
                               f"not {printable(self.node)!r}")
        try:
            tail = _parse_line(last)
            if tail["key_id"] != self.key_id or tail["node"] != self.node:
                raise _Bad("not written by this node and key")
            _check_signature(tail, self.public_key)
        except _Bad as bad:
            raise self._damaged(f"last record: {bad}") from None
        self._seq, self._head, self._size = tail["seq"] + 1, record_hash(tail), size

    def _damaged(self, what: str) -> FedSiloError:
        return FedSiloError(f"{self.path}: the audit log is damaged ({what}); nothing was changed: "
                            f"check it with `fl-audit verify {self.path}`")


def _plain_json(data: dict, kind: str) -> dict:
    """`data` as a reader will see it: round-tripped through JSON, so the signed bytes are the
    ones a verifier rebuilds (int keys become strings, tuples lists)."""
    if not isinstance(data, dict):
        raise TypeError(f"audit data for {kind!r} must be a dict, got {type(data).__name__}")
    try:
        plain = json.loads(json.dumps(data, allow_nan=False))
        canonical(plain)  # e.g. a lone surrogate cannot be encoded as UTF-8
    except (TypeError, ValueError) as err:
        raise ValueError(f"audit data for {kind!r} is not plain JSON: {err}") from None
    return plain


def _first_and_last_lines(path: Path, block: int = 65536) -> tuple[bytes, bytes, int]:
    """The first and the last line (each with its newline, if it has one) and the file size,
    reading only the two ends of the file."""
    with open(path, "rb") as fh:
        first = fh.readline()
        size = fh.seek(0, os.SEEK_END)
        # Search backwards for the newline that ends the second-to-last line.
        tail, pos = b"", size
        while pos > 0:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            tail = fh.read(step) + tail
            cut = tail.rfind(b"\n", 0, len(tail) - 1)
            if cut >= 0:
                return first, tail[cut + 1:], size
        return first, tail, size
