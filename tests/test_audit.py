"""The signed audit log: a round trip, every kind of damage found at the right record, clean errors."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from common.audit import (
    GENESIS,
    AuditLog,
    generate_key,
    head_hash,
    key_id,
    load_private_key,
    load_public_key,
    trust,
    verify_log,
)
from common.errors import FedSiloError
from server.audit_cli import main as fl_audit

EVENTS = [
    ("run_start", {"run_id": "r1", "labels": ["account", "card"], "rounds": 2}),
    ("round", {"round": 1, "accuracy": 0.5, "sites": ["site A", "site B"]}),
    ("refusal", {"round": 2, "site": "site B", "reason": "privacy budget exhausted"}),
    ("round", {"round": 2, "accuracy": 0.75, "sites": ["site A"]}),
    ("final_model", {"sha256": "ab" * 32}),
]  # with log_start: 6 records, seq 0..5


def canonical(obj) -> bytes:
    """The spec's canonical bytes, written out here independently of common.audit."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.fixture()
def keys(tmp_path):
    """Two nodes' keys: the server's and someone else's."""
    server = tmp_path / "keys" / "server"
    other = tmp_path / "keys" / "other"
    server.parent.mkdir()
    return {"server": (server, generate_key(server)), "other": (other, generate_key(other))}


@pytest.fixture()
def log(tmp_path, keys):
    path = tmp_path / "audit.jsonl"
    writer = AuditLog(path, keys["server"][0], "server")
    for kind, data in EVENTS:
        writer.append(kind, data)
    return path


def lines(path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path, rows: list[bytes]) -> None:
    path.write_bytes(b"".join(rows))


def forged(prev_line: bytes, private_path, **fields) -> bytes:
    """A well-formed record that continues the chain after prev_line, signed with another key."""
    key = load_private_key(private_path)
    prev = json.loads(prev_line)
    record = {"seq": prev["seq"] + 1, "time": "2030-01-01T00:00:00.000Z", "node": prev["node"],
              "key_id": key_id(key.public_key()), "kind": "round", "data": {"round": 99},
              "prev": hashlib.sha256(prev_line.rstrip(b"\n")).hexdigest(), **fields}
    sig = key.sign(canonical(record), ec.ECDSA(hashes.SHA256()))
    return canonical({**record, "sig": base64.b64encode(sig).decode()}) + b"\n"


def cli_error(capsys, *argv) -> str:
    """Run fl-audit expecting failure: exit 2, nothing on stdout for verify, one line on stderr."""
    with pytest.raises(SystemExit) as exc:
        fl_audit([str(a) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


# ------------------------------------------------------------------------- the good path

def test_round_trip(log, keys):
    result = verify_log(log)
    assert result.ok and result.first_bad is None and result.reason == ""
    assert result.records == 6
    rows = [json.loads(line) for line in lines(log)]
    assert [r["seq"] for r in rows] == list(range(6))
    assert [r["kind"] for r in rows] == ["log_start"] + [k for k, _ in EVENTS]
    assert [r["data"] for r in rows[1:]] == [d for _, d in EVENTS]
    assert {r["node"] for r in rows} == {"server"}
    assert rows[0]["prev"] == GENESIS
    # The format, checked with cryptography directly: prev chain, signatures, key in log_start.
    public = load_public_key(keys["server"][1])
    assert rows[0]["data"]["public_key"] == keys["server"][1].read_text().strip()
    for prev_line, row in zip([None, *lines(log)], rows):
        if prev_line is not None:
            assert row["prev"] == hashlib.sha256(prev_line.rstrip(b"\n")).hexdigest()
        assert row["key_id"] == key_id(public)
        unsigned = {k: v for k, v in row.items() if k != "sig"}
        public.verify(base64.b64decode(row["sig"]), canonical(unsigned), ec.ECDSA(hashes.SHA256()))
        assert row["time"].endswith("Z")
    assert result.head == hashlib.sha256(lines(log)[-1].rstrip(b"\n")).hexdigest() == head_hash(log)
    assert verify_log(log, trust(public)).ok


def test_append_returns_the_record_and_head(tmp_path, keys):
    writer = AuditLog(tmp_path / "a.jsonl", keys["server"][0], "server")
    record = writer.append("round", {"round": 1})
    assert record["seq"] == 1 and record["kind"] == "round" and "sig" in record
    assert writer.head == head_hash(tmp_path / "a.jsonl")


def test_reopen_continues_the_chain(log, keys):
    writer = AuditLog(log, keys["server"][0], "server")
    assert writer.head == head_hash(log)
    record = writer.append("run_start", {"run_id": "r2"})
    assert record["seq"] == 6
    result = verify_log(log, trust(load_public_key(keys["server"][1])))
    assert result.ok and result.records == 7


def test_data_survives_json_edge_cases(tmp_path, keys):
    """Line separators inside strings, int keys, tuples: what is signed is what a reader rebuilds."""
    path = tmp_path / "a.jsonl"
    writer = AuditLog(path, keys["server"][0], "site A")
    writer.append("round", {"note": "a\u2028b\u0085c\nd", 10: "ten", 9: "nine", "pair": (1, 2)})
    assert verify_log(path).ok
    assert json.loads(lines(path)[1])["data"] == {"note": "a\u2028b\u0085c\nd", "10": "ten",
                                                  "9": "nine", "pair": [1, 2]}
    with pytest.raises(ValueError, match="not plain JSON"):
        writer.append("round", {"loss": float("nan")})
    with pytest.raises(ValueError):
        writer.append("log_start", {})
    with pytest.raises(TypeError):
        writer.append("round", [1, 2])
    assert verify_log(path).records == 2  # the refused appends wrote nothing


# ---------------------------------------------------------------------------- damage

def edit_data(rows, keys):
    rec = json.loads(rows[2])
    rec["data"]["accuracy"] = 0.99
    rows[2] = canonical(rec) + b"\n"  # still canonical: only the signature can tell
    return 2, "signature does not verify"


def reformat(rows, keys):
    rows[3] = json.dumps(json.loads(rows[3]), indent=1).replace("\n", " ").encode() + b"\n"
    return 3, "canonical form"


def duplicate_key(rows, keys):
    rows[1] = rows[1].replace(b'{"data":', b'{"data":{"run_id":"evil"},"data":', 1)
    return 1, "canonical form"


def delete_middle(rows, keys):
    del rows[3]
    return 3, "seq is 4, expected 3"


def delete_first(rows, keys):
    del rows[0]
    return 0, "seq is 1, expected 0"


def swap(rows, keys):
    rows[2], rows[3] = rows[3], rows[2]
    return 2, "seq is 3, expected 2"


def truncate_last(rows, keys):
    rows[-1] = rows[-1][: len(rows[-1]) // 2]
    return 5, "incomplete last line"


def drop_last_newline(rows, keys):
    rows[-1] = rows[-1].rstrip(b"\n")
    return 5, "incomplete last line"


def append_other_key(rows, keys):
    rows.append(forged(rows[-1], keys["other"][0]))
    return 6, "signed by an unknown key"


def append_other_node(rows, keys):
    rows.append(forged(rows[-1], keys["server"][0], node="site A"))
    return 6, "node 'site A' in the log of node 'server'"


def change_seq_and_prev(rows, keys):
    rows[4] = forged(rows[2], keys["server"][0]).replace(b'"seq":3', b'"seq":4')
    return 4, "prev is not the hash"


def non_json_line(rows, keys):
    rows[2] = b"this is not json\n"
    return 2, "not valid JSON"


def blank_line_at_end(rows, keys):
    rows.append(b"\n")
    return 6, "not valid JSON"


def not_utf8(rows, keys):
    rows[1] = rows[1].replace(b"r1", b"\xff\xfe")
    return 1, "not valid UTF-8"


def missing_field(rows, keys):
    rec = json.loads(rows[1])
    del rec["prev"]
    rows[1] = canonical(rec) + b"\n"
    return 1, "missing field 'prev'"


def second_log_start(rows, keys):
    rows.append(forged(rows[-1], keys["server"][0], kind="log_start"))
    return 6, "may only be the first record"


def empty_file(rows, keys):
    rows.clear()
    return 0, "empty log"


DAMAGE = [edit_data, reformat, duplicate_key, delete_middle, delete_first, swap, truncate_last,
          drop_last_newline, append_other_key, append_other_node, change_seq_and_prev,
          non_json_line, blank_line_at_end, not_utf8, missing_field, second_log_start, empty_file]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_damage_is_found_at_the_right_record(log, keys, capsys, damage):
    rows = lines(log)
    first_bad, fragment = damage(rows, keys)
    write_lines(log, rows)
    for trusted in (None, trust(load_public_key(keys["server"][1]))):
        result = verify_log(log, trusted)
        assert not result.ok
        assert result.first_bad == first_bad and result.records == first_bad, result
        assert fragment in result.reason
        assert "\n" not in result.reason
    expected_head = GENESIS if first_bad == 0 else hashlib.sha256(rows[first_bad - 1].rstrip(b"\n")).hexdigest()
    assert result.head == expected_head
    with pytest.raises(FedSiloError, match=f"record {first_bad}: "):
        head_hash(log)
    # The CLI: one line, naming the log and the record, exit 2, never OK.
    err = cli_error(capsys, "verify", log)
    assert err.startswith(f"fl-audit: error: {log}: record {first_bad}: ") and fragment in err
    assert capsys.readouterr().out == ""
    err = cli_error(capsys, "verify", log, "--key", keys["server"][1])
    assert f"record {first_bad}: " in err


def test_a_log_signed_by_an_unknown_key(tmp_path, keys, capsys):
    """A whole log rewritten with someone else's key is consistent, but not the trusted node's."""
    path = tmp_path / "forged.jsonl"
    AuditLog(path, keys["other"][0], "server").append("round", {"round": 1})
    assert verify_log(path).ok  # consistent with itself: that is all it shows without a key
    result = verify_log(path, trust(load_public_key(keys["server"][1])))
    assert not result.ok and result.first_bad == 0 and "signed by an unknown key" in result.reason
    err = cli_error(capsys, "verify", path, "--key", keys["server"][1])
    assert f"record 0: signed by an unknown key {key_id(load_public_key(keys['other'][1]))}" in err
    # Another trusted key signing inside the server's log is still an insertion.
    rows = lines(path)
    server_log = tmp_path / "server.jsonl"
    AuditLog(server_log, keys["server"][0], "server")
    write_lines(server_log, [*lines(server_log), forged(lines(server_log)[-1], keys["other"][0])])
    both = trust(load_public_key(keys["server"][1]), load_public_key(keys["other"][1]))
    result = verify_log(server_log, both)
    assert result.first_bad == 1 and "not by this log's key" in result.reason
    assert rows  # the forged log itself stays untouched


def test_log_start_key_must_match_its_key_id(log, keys):
    rows = lines(log)
    rec = json.loads(rows[0])
    rec["data"]["public_key"] = keys["other"][1].read_text().strip()
    rows[0] = canonical(rec) + b"\n"
    write_lines(log, rows)
    result = verify_log(log)
    assert result.first_bad == 0 and "does not match its key_id" in result.reason


def test_log_start_public_key_is_never_opened_as_a_file(log, keys, tmp_path):
    rows = lines(log)
    rec = json.loads(rows[0])
    rec["data"]["public_key"] = str(keys["server"][1])  # a path: must not be read
    rows[0] = canonical(rec) + b"\n"
    write_lines(log, rows)
    result = verify_log(log)
    assert result.first_bad == 0 and "not an OpenSSH P-256 public key" in result.reason


def test_missing_and_unreadable_log(tmp_path, capsys):
    with pytest.raises(FedSiloError, match="no such file"):
        verify_log(tmp_path / "nope.jsonl")
    err = cli_error(capsys, "verify", tmp_path / "nope.jsonl")
    assert err == f"fl-audit: error: {tmp_path / 'nope.jsonl'}: no such file"
    err = cli_error(capsys, "verify", tmp_path)  # a folder
    assert "cannot read" in err
    assert "no such file" in cli_error(capsys, "show", tmp_path / "nope.jsonl")


# -------------------------------------------------------------------- the writer refuses

def test_writer_refuses_a_torn_log_and_never_truncates(log, keys):
    write_lines(log, [*lines(log), b'{"seq":6,"time":"2030-01-01'])
    before = log.read_bytes()
    with pytest.raises(FedSiloError, match="the audit log is damaged") as exc:
        AuditLog(log, keys["server"][0], "server")
    assert "\n" not in str(exc.value) and "incomplete last line" in str(exc.value)
    assert log.read_bytes() == before


@pytest.mark.parametrize("content, fragment", [
    (b"", "empty"),
    (b"garbage\n", "first record: not valid JSON"),
])
def test_writer_refuses_an_empty_or_broken_file(tmp_path, keys, content, fragment):
    path = tmp_path / "a.jsonl"
    path.write_bytes(content)
    with pytest.raises(FedSiloError, match=fragment):
        AuditLog(path, keys["server"][0], "server")
    assert path.read_bytes() == content


def test_writer_refuses_an_edited_last_record(log, keys):
    rows = lines(log)
    rows[-1] = rows[-1].replace(b"ab" * 32, b"cd" * 32)
    write_lines(log, rows)
    with pytest.raises(FedSiloError, match="damaged.*last record: signature does not verify"):
        AuditLog(log, keys["server"][0], "server")


def test_writer_refuses_another_key_or_node(log, keys):
    with pytest.raises(FedSiloError, match="started with key sha256:"):
        AuditLog(log, keys["other"][0], "server")
    with pytest.raises(FedSiloError, match="belongs to node 'server', not 'site A'"):
        AuditLog(log, keys["server"][0], "site A")


def test_writer_refuses_a_log_that_grew_behind_its_back(log, keys):
    first = AuditLog(log, keys["server"][0], "server")
    AuditLog(log, keys["server"][0], "server").append("round", {"round": 3})
    with pytest.raises(FedSiloError, match="another writer"):
        first.append("round", {"round": 3})
    assert verify_log(log).ok


def test_writer_reads_a_long_last_line(tmp_path, keys):
    """The tail is read backwards in blocks; a record longer than a block still works."""
    path = tmp_path / "a.jsonl"
    AuditLog(path, keys["server"][0], "server").append("round", {"blob": "x" * 200_000})
    AuditLog(path, keys["server"][0], "server").append("round", {"round": 2})
    assert verify_log(path).records == 3


# ------------------------------------------------------------------------------ keys

def test_generated_key_files(keys):
    private, public = keys["server"]
    assert public.name == "server.pub"
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    text = public.read_text()
    assert text.count("\n") == 1 and text.startswith("ecdsa-sha2-nistp256 ")
    pub = load_public_key(public)
    assert key_id(pub) == key_id(load_private_key(private).public_key())
    assert key_id(pub) == key_id(load_public_key(text.strip()))  # an OpenSSH line works too
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key_id(pub) == "sha256:" + hashlib.sha256(der).hexdigest()
    with pytest.raises(FedSiloError, match="refusing to overwrite"):
        generate_key(private)


def _write_private(path, key, password=None, fmt=serialization.PrivateFormat.OpenSSH):
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, enc))
    return path


def test_private_key_errors(tmp_path):
    cases = {
        "no such key file": tmp_path / "missing",
        "cannot read the key": tmp_path,
        "not an OpenSSH or PEM private key": tmp_path / "junk",
        "a RSA key": _write_private(tmp_path / "rsa", rsa.generate_private_key(65537, 2048)),
        "a Ed25519 key": _write_private(tmp_path / "ed", ed25519.Ed25519PrivateKey.generate()),
        "a secp384r1 key": _write_private(tmp_path / "p384", ec.generate_private_key(ec.SECP384R1())),
        "the key is encrypted": _write_private(tmp_path / "enc", ec.generate_private_key(ec.SECP256R1()),
                                               b"pw", serialization.PrivateFormat.PKCS8),
    }
    (tmp_path / "junk").write_text("hello\n")
    for fragment, path in cases.items():
        with pytest.raises(FedSiloError) as exc:
            load_private_key(path)
        assert fragment in str(exc.value) and str(path) in str(exc.value)
        assert "\n" not in str(exc.value)
    # A PEM (PKCS#8) P-256 key is accepted as well.
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "p256.pem").write_bytes(pem)
    assert isinstance(load_private_key(tmp_path / "p256.pem"), ec.EllipticCurvePrivateKey)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH's ssh-keygen")
def test_keys_from_ssh_keygen(tmp_path):
    """Keys made by OpenSSH itself: a plain P-256 key signs a log, an encrypted one is refused."""
    for name, password in (("plain", ""), ("enc", "secret")):
        subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "256", "-N", password, "-C", "x",
                        "-f", str(tmp_path / name)], check=True, capture_output=True, timeout=60)
    AuditLog(tmp_path / "a.jsonl", tmp_path / "plain", "site A").append("round", {"round": 1})
    assert verify_log(tmp_path / "a.jsonl", trust(load_public_key(tmp_path / "plain.pub"))).ok
    with pytest.raises(FedSiloError, match="the key is encrypted"):
        load_private_key(tmp_path / "enc")


def test_public_key_errors(tmp_path, keys):
    rsa_pub = rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    (tmp_path / "rsa.pub").write_text(rsa_pub + "\n")
    (tmp_path / "junk.pub").write_text("hello\n")
    (tmp_path / "two.pub").write_text(keys["server"][1].read_text() + keys["other"][1].read_text())
    cases = [
        (tmp_path / "missing.pub", "no such key file"),
        (tmp_path / "junk.pub", "not an OpenSSH public key line"),
        (tmp_path / "two.pub", "found 2 lines"),
        (tmp_path / "rsa.pub", "a RSA key"),
        (rsa_pub, "a RSA key"),
        ("ecdsa-sha2-nistp256 AAAAnotbase64", "not an OpenSSH public key line"),
        (keys["server"][0], "this is a private key"),
    ]
    for source, fragment in cases:
        with pytest.raises(FedSiloError) as exc:
            load_public_key(source)
        assert fragment in str(exc.value) and "\n" not in str(exc.value)


def test_audit_log_with_a_bad_key(tmp_path):
    with pytest.raises(FedSiloError, match="no such key file"):
        AuditLog(tmp_path / "a.jsonl", tmp_path / "missing", "server")
    assert not (tmp_path / "a.jsonl").exists()


# ------------------------------------------------------------------------------- CLI

def test_cli_verify_ok(log, keys, capsys):
    assert fl_audit(["verify", str(log), "--key", str(keys["server"][1])]) == 0
    out, err = capsys.readouterr()
    assert out == f"OK: 6 records, head {head_hash(log)}\n" and err == ""
    assert fl_audit(["verify", str(log)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("OK: 6 records") and "pass --key" in err  # says what it did not check


def test_cli_bad_key_file(log, tmp_path, capsys):
    err = cli_error(capsys, "verify", log, "--key", tmp_path / "missing.pub")
    assert err == f"fl-audit: error: {tmp_path / 'missing.pub'}: no such key file"


def test_cli_show(log, capsys):
    assert fl_audit(["show", str(log)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 6
    assert out[0].startswith("0  ") and "server  log_start  key sha256:" in out[0]
    assert out[2].startswith("2  ") and "server  round" in out[2] and '"accuracy": 0.5' in out[2]


def test_cli_show_marks_damage_and_fails(log, capsys):
    rows = lines(log)
    rows[2] = rows[2].replace(b"0.5", b"0.9")
    rows.insert(4, b"not json\x1b[31m\n")
    write_lines(log, rows)
    with pytest.raises(SystemExit) as exc:
        fl_audit(["show", str(log)])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    out = out.splitlines()
    assert [line.startswith("! ") for line in out] == [False, False, True, True, True, True, True]
    assert out[4] == "! <line 4: not a record>" and "\x1b" not in "".join(out)
    assert err.strip() == f"fl-audit: error: {log}: record 2: signature does not verify: " \
                          "the record was changed after it was signed"


def test_cli_show_escapes_control_characters(tmp_path, keys, capsys):
    path = tmp_path / "a.jsonl"
    AuditLog(path, keys["server"][0], "site \x1b[2J").append("round\x07", {"x": "\x1b]0;pwn\x07"})
    assert fl_audit(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b" in out


def test_cli_help_and_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        fl_audit(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "verify" in out and "show" in out and "exit status" in out
    with pytest.raises(SystemExit) as exc:
        fl_audit(["verify", "--help"])
    assert exc.value.code == 0 and "--key PUBFILE" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        fl_audit([])
    assert exc.value.code == 2
