"""The bad-input suite (issue 5): every bad input gives one clear line on stderr, a non-zero exit,
no traceback, and leaves nothing behind (no run directory, no half-written file).

CASES is the one table of bad inputs; add a row for every new one. A row names the console
script, its arguments and a fragment of the expected error line. An argument may be a function
of the test's `Inputs`, which makes the file, kit or federation the case needs in the test's own
folder. After each case the whole folder must be exactly as before (same files, same sizes and
times): nothing created, nothing changed.

Cases that need more than one command (a mount, a held port, a refused connection, a signal)
follow the table as their own tests.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from common.data import MAX_LINE_BYTES
from server.federation import Federation
from tests.helpers import BIN, LABELS, assert_clean_error, run_cli

GOOD = "text\tlabel\n" + "".join(f"message number {i}\t{LABELS.split(',')[i % 4]}\n" for i in range(20))


# ------------------------------------------------------------------ inputs a case can ask for
class Inputs:
    """The test's folder and what a case asks to be made in it."""

    def __init__(self, root: Path, federations: Path):
        self.root, self.federations = root, federations
        self.held: list[socket.socket] = []

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return path


def data(name: str, content: str | bytes = GOOD):
    return lambda inp: inp.file(name, content)


def fifo(inp: Inputs) -> Path:
    path = inp.root / "pipe.tsv"
    os.mkfifo(path)  # opening it would block: it must be refused without reading
    return path


def folder(inp: Inputs) -> Path:
    path = inp.root / "folder.tsv"
    path.mkdir()
    return path


def huge_line(inp: Inputs) -> Path:
    """A 50 MB line without a line break: refused after reading at most MAX_LINE_BYTES of it."""
    path = inp.root / "huge.tsv"
    with open(path, "wb") as fh:
        fh.write(b"text\tlabel\n")
        for _ in range(50):
            fh.write(b"x" * 2**20)
        fh.write(b"\tcard\n")
    return path


def run_dir(inp: Inputs) -> Path:
    return inp.root / "run"  # must not exist after the case


def missing(name: str):
    return lambda inp: inp.root / name


def busy_port(inp: Inputs) -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    inp.held.append(sock)
    return str(sock.getsockname()[1])


def federation(change=None):
    """A copy of the federation made once per session (CA, server certificate, site A enrolled)."""
    def make(inp: Inputs) -> Path:
        path = shutil.copytree(inp.federations / "fed", inp.root / "fed")
        if change:
            change(path, inp)
        return path
    return make


def other_key():
    """A key the site made, but not the one enrolled."""
    def make(inp: Inputs) -> Path:
        from common.pki import make_node_key

        make_node_key(inp.root / "other.key")
        return inp.root / "other.key"
    return make


def kit(change=None):
    """A copy of site A's kit from that federation."""
    def make(inp: Inputs) -> Path:
        path = shutil.copytree(inp.federations / "fed" / "kits" / "A", inp.root / "kit")
        if change:
            change(path, inp)
        return path
    return make


def write(name: str, content: str | bytes):
    def change(path: Path, inp: Inputs) -> None:
        (path / name).write_bytes(content.encode() if isinstance(content, str) else content)
    return change


def remove(*names: str):
    def change(path: Path, inp: Inputs) -> None:
        for name in names:
            (path / name).unlink()
    return change


def expired_certificate(path: Path, inp: Inputs, ca: bool) -> None:
    """Replace ca.pem (ca=True) or server.pem with the same kind of certificate, expired a day ago."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired")])
    issuer, signer = subject, key
    if not ca:  # a server certificate signed by the federation's own CA, so only the date is wrong
        fed = inp.federations / "fed"
        issuer = x509.load_pem_x509_certificate((fed / "ca.pem").read_bytes()).subject
        signer = serialization.load_pem_private_key((fed / "ca.key").read_bytes(), password=None)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30)).not_valid_after(now - dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signer, hashes.SHA256()))
    (path / ("ca.pem" if ca else "server.pem")).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if not ca:
        (path / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))


def other_federations_ca(path: Path, inp: Inputs) -> None:
    shutil.copyfile(inp.federations / "other" / "ca.pem", path / "ca.pem")


def no_site_enrolled(path: Path, inp: Inputs) -> None:
    for pub in (path / "sites").glob("*.pub"):
        pub.unlink()


# Arguments every case of a tool starts with.
def client(*extra, data_file=data("good.tsv")):
    return ["--site", "A", "--insecure", "--data", data_file, *extra]


def sim(*extra, data_file=data("good.tsv")):
    return ["--sites", "2", "--data", data_file, "--run-dir", run_dir, *extra]


def free(inp: Inputs) -> str:
    """A free port: rows must fail on their own input, not on a port someone else holds."""
    from common.launch import free_port

    return str(free_port())


def server(*extra):
    return ["--port", free, "--run-dir", run_dir, *extra]


def case(tool, args, fragment, id, slow=False):  # noqa: A002 - pytest's name
    """One row. fl-server and fl-sim import torch (several seconds on 2 busy cores): rows that
    repeat a check another row already runs are `slow`, so `make test-fast` stays short."""
    return pytest.param(tool, args, fragment, id=id, marks=[pytest.mark.slow] if slow else [])


CASES = [
    # -------------------------------------------------------------------- data files
    case("fl-client", client(data_file=missing("nope.tsv")), "data file not found", "data-missing"),
    case("fl-client", client(data_file=data("empty.tsv", "")), "data file is empty", "data-empty"),
    case("fl-client", client(data_file=data("blank.tsv", "\n \n\t\n")), "data file is empty", "data-only-blank-lines"),
    case("fl-client", client(data_file=data("header.tsv", "text\tlabel\n")), "no records (only a header?)",
         "data-header-only"),
    case("fl-client", client(data_file=data("nocol.tsv", "message\tlabel\nhello\tcard\n")),
         "missing column 'text'", "data-missing-column"),
    case("fl-client", client(data_file=data("latin1.tsv", "text\tlabel\ncafé card\tcard\n".encode("latin-1"))),
         "latin1.tsv:2: not valid UTF-8", "data-latin-1"),
    case("fl-client", client(data_file=data("utf16.tsv", GOOD.encode("utf-16"))), "UTF-16 encoded",
         "data-utf-16-bom"),
    case("fl-client", client(data_file=data("commas.tsv", GOOD.replace("\t", ","))),
         "looks comma-separated, but a .tsv file must be tab-separated", "data-comma-file-named-tsv"),
    case("fl-client", client(data_file=data("semicolons.csv", GOOD.replace("\t", ";"))),
         "looks semicolon-separated", "data-semicolons-in-csv"),
    case("fl-client", client(data_file=data("fields.tsv", GOOD + "one\ttoo\tmany\n")),
         "fields.tsv:22: expected 2 fields (TSV), found 3", "data-wrong-number-of-fields"),
    case("fl-client", client(data_file=data("twice.tsv", GOOD + GOOD)), "twice.tsv:22: the header line is repeated",
         "data-duplicated-header-line"),
    case("fl-client", client(data_file=data("dupcol.tsv", "text\ttext\tlabel\na\tb\tcard\n")),
         "duplicated column names", "data-duplicated-column-names"),
    case("fl-client", client(data_file=huge_line), f"line longer than {MAX_LINE_BYTES // 2**20} MiB",
         "data-50-mb-line"),
    case("fl-client", client(data_file=data("emptytext.tsv", GOOD + " \tcard\n")),
         "emptytext.tsv:22: empty or non-text value in column 'text'", "data-empty-text"),
    case("fl-client", client(data_file=data("nolabel.tsv", GOOD + "some text\t\n")),
         "empty or invalid label", "data-empty-label"),
    case("fl-client", client(data_file=data("garbage.tsv", bytes(range(256)) * 64)), "binary file",
         "data-binary-garbage"),
    case("fl-client", client(data_file=folder), "is a directory, not a data file", "data-directory"),
    case("fl-client", client(data_file=fifo), "not a regular file", "data-fifo"),
    case("fl-client", client(data_file=data("data.xlsx", "PK")), "unsupported data format '.xlsx'",
         "data-unsupported-format"),
    case("fl-client", client(data_file=data("bad.jsonl", '{"text": "a", "label": "card"}\n{"text": \n')),
         "bad.jsonl:2: invalid JSON", "data-jsonl-broken-line"),
    case("fl-client", client(data_file=data("list.jsonl", '["a", "card"]\n')), "expected a JSON object per line",
         "data-jsonl-not-an-object"),
    case("fl-client", client(data_file=data("deep.jsonl", '{"text": "a", "label": "card"}\n{"text": '
                                            + "[" * 100_000 + "]" * 100_000 + "}\n")),
         "deep.jsonl:2: JSON nested deeper than 32 levels", "data-jsonl-deeply-nested"),
    case("fl-sim", sim("--labels", LABELS, data_file=data("mortgage.tsv", GOOD + "b\tmortgage\n")),
         "'mortgage' not in the run's label set", "data-label-outside-label-set"),
    case("fl-sim", sim("--sites", "50"), "has only 20 records", "data-fewer-records-than-sites"),
    case("fl-client", client("--group-column", "ward"), "missing column 'ward'", "data-group-column-missing"),
    case("fl-client", client("--group-column", "ward", data_file=data("ward.tsv", "text\tlabel\tward\nhi\tcard\t<b>\n")),
         "ward.tsv:2: the group in column 'ward' is empty or not a plain name", "data-group-value-not-a-name"),
    case("fl-client", client("--fairness-reweight"), "fairness-reweight needs group-column", "config-reweight-without-groups"),

    # -------------------------------------------------------------------- configuration
    case("fl-server", server("--insecure", "--labels", LABELS, "--rounds", "abc"),
         "argument --rounds: invalid int value: 'abc'", "config-rounds-not-a-number"),
    case("fl-server", server("--insecure", "--labels", LABELS, "--learning-rate", "x"),
         "argument --learning-rate: invalid float value: 'x'", "config-learning-rate-not-a-number"),
    case("fl-sim", sim("--rounds", "0"), "rounds: must be >= 1", "config-rounds-zero"),
    case("fl-server", server("--insecure", "--labels", LABELS, "--eval-fraction", "0.95"),
         "eval-fraction: must be <= 0.9", "config-eval-fraction-too-large", slow=True),
    case("fl-server", server("--insecure", "--labels", LABELS, "--trainable", "half"),
         "argument --trainable: invalid choice: 'half'", "config-unknown-choice", slow=True),
    case("fl-server", server("--insecure", "--labels", LABELS, "--port", "70000"),
         "invalid port 70000", "config-port-out-of-range"),
    case("fl-server", server("--insecure", "--labels", "card"), "at least two labels", "config-one-label"),
    case("fl-client", client("--threads", "0"), "argument --threads: invalid number 0", "config-client-threads-zero"),
    case("fl-client", client("--max-rounds", "0"), "argument --max-rounds: invalid number 0",
         "config-client-max-rounds-zero"),
    case("fl-client", client("--pull-interval", "0"), "--pull-interval 0.0: give a number of seconds from 0.1 to 60",
         "config-client-pull-interval-zero"),
    case("fl-server", server("--insecure", "--labels", "card,loan,card"), "the label set has duplicates",
         "config-duplicate-labels", slow=True),
    case("fl-server", server("--insecure", "--labels", LABELS, "--min-sites", "1"),
         "secure aggregation needs min-sites >= secagg-threshold", "config-min-sites-below-secagg-threshold", slow=True),
    case("fl-sim", sim("--min-sites", "3"), "--min-sites 3 is more than --sites 2", "config-min-sites-above-sites"),
    case("fl-sim", sim("--partition", "dirichlet", "--dirichlet-alpha", "0.001", "--sites", "10"),
         "dirichlet-alpha", "config-dirichlet-split-impossible"),
    case("fl-sim", sim("--model", "nobody/no-such-bert"), "cannot load model 'nobody/no-such-bert'",
         "config-unknown-model-offline"),
    case("fl-server", server("--insecure", "--labels", LABELS, "--model", "/no/such/dir"), "cannot load model",
         "config-model-folder-missing", slow=True),
    case("fl-server", server("--insecure", "--labels", LABELS, "--host", "0.0.0.0"),
         "plaintext is allowed on 127.0.0.1 only", "config-plaintext-on-public-address", slow=True),
    case("fl-server", server("--labels", LABELS), "give --federation DIR", "config-neither-federation-nor-insecure", slow=True),
    case("fl-server", server("--labels", LABELS, "--insecure", "--federation", federation()),
         "--federation and --insecure exclude each other", "config-federation-and-insecure"),
    case("fl-client", client("--target-epsilon", "0"), "target-epsilon: must be >=", "config-target-epsilon-zero"),
    # nan passes every comparison: a budget of nan would never be exhausted
    case("fl-client", client("--target-epsilon", "nan", "--privacy-budget", "nan"),
         "target-epsilon: must be a finite number", "config-target-epsilon-nan"),
    case("fl-sim", sim("--learning-rate", "nan"), "learning-rate: must be a finite number",
         "config-learning-rate-nan", slow=True),
    case("fl-client", client("--target-epsilon", "9", "--privacy-budget", "8"), "larger than the privacy-budget",
         "config-epsilon-above-budget"),
    case("fl-client", client("--delta", "0.09"), "not below 1/n", "config-delta-too-large"),
    case("fl-client", client("--redact-entities", "EMAIL,SHOESIZE"), "SHOESIZE", "config-unknown-pii-type"),
    case("fl-client", client("--text-column", "label"), "must be two different columns",
         "config-text-and-label-column-equal"),
    case("fl-client", client("--max-wait", "0"), "--max-wait 0.0: give a number of seconds", "config-max-wait-zero"),
    case("fl-client", ["--insecure", "--kit", kit(), "--data", data("good.tsv")],
         "--kit and --insecure exclude each other", "config-kit-and-insecure"),
    case("fl-client", ["--site", "A", "--data", data("good.tsv")], "give --kit DIR", "config-neither-kit-nor-insecure"),
    case("fl-client", client("--server", "10.1.2.3:9092"), "plaintext is allowed on 127.0.0.1 only",
         "config-plaintext-to-remote-server"),
    case("fl-client", client("--server", "nocolon"), "invalid address 'nocolon'", "config-server-address-no-port"),
    case("fl-client", ["--site", "a b", "--insecure", "--data", data("good.tsv")], "--site 'a b'",
         "config-bad-site-name"),
    case("fl-client", client("--ledger", data("ledger.json", "{broken")), "unreadable or corrupted",
         "config-ledger-broken"),
    case("fl-client", client("--redaction-config", data("redact.json", '{"entities": ["EMAIL"')), "redact.json",
         "config-redaction-file-broken"),
    case("fl-client", ["--kit", kit(write("kit.json", '{"site": "A", "server": ')), "--data", data("good.tsv")],
         "kit.json is unreadable", "config-kit-json-broken"),
    case("fl-client", ["--kit", kit(write("kit.json", '{"server": "127.0.0.1:9092"}')), "--data", data("good.tsv")],
         "missing key(s) site", "config-kit-json-missing-key"),
    case("fl-client", ["--kit", kit(write("kit.json", '{"site": "A", "server": "127.0.0.1:9092", "sever": "x"}')),
                       "--data", data("good.tsv")], "unknown key(s) sever", "config-kit-json-unknown-key"),
    case("fl-client", ["--kit", kit(write("kit.json", '{"site": "A", "server": "127.0.0.1:99999"}')),
                       "--data", data("good.tsv")], "port must be 1-65535", "config-kit-json-bad-address"),
    case("fl-client", ["--kit", missing("no-kit"), "--data", data("good.tsv")], "is not a site kit",
         "config-kit-missing"),
    case("fl-server", server("--labels", LABELS, "--federation", federation(write("federation.json", "{oops"))),
         "federation.json is unreadable", "config-federation-json-broken"),
    case("fl-server", server("--labels", LABELS, "--federation", federation(write("federation.json", '{"hosts": []}'))),
         "missing key(s) address", "config-federation-json-missing-key", slow=True),
    case("fl-server", server("--labels", LABELS, "--federation", missing("no-fed")), "is not a federation folder",
         "config-federation-missing", slow=True),
    case("fl-server", server("--labels", LABELS, "--federation", federation(no_site_enrolled)),
         "no site is enrolled", "config-no-site-enrolled"),

    # -------------------------------------------------------------------- command-line arguments
    case("fl-client", client("--bogus"), "fl-client: error: unrecognized arguments: --bogus",
         "cli-client-unknown-flag"),
    case("fl-client", ["--site", "A", "--insecure"], "the following arguments are required: --data",
         "cli-client-missing-data"),
    case("fl-server", server("--insecure", "--labels", LABELS, "--bogus"), "unrecognized arguments: --bogus",
         "cli-server-unknown-flag", slow=True),
    case("fl-server", ["init", "--dir", missing("new-fed")], "the following arguments are required: --host",
         "cli-init-missing-host"),
    case("fl-sim", sim("--bogus"), "fl-sim: error: unrecognized arguments: --bogus", "cli-sim-unknown-flag"),
    case("fl-server", ["resume", missing("no-run")], "is not the run directory of an fl-server run",
         "cli-resume-not-a-run-dir"),
    case("fl-predict", [missing("no-run"), "--text", "hi"], "not a run directory", "cli-predict-not-a-run-dir"),
    case("fl-predict", [lambda inp: inp.root, "--text", "hi"], "no final model", "cli-predict-no-final-model"),

    # -------------------------------------------------------------------- federation set-up
    case("fl-server", ["enroll", "--dir", missing("none"), "--site", "A"], "is not a federation folder",
         "fed-enroll-not-a-federation", slow=True),
    case("fl-server", ["init", "--dir", federation(), "--host", "127.0.0.1"], "already holds a federation",
         "fed-init-over-a-federation"),
    case("fl-server", ["init", "--dir", missing("new-fed"), "--host", "127.0.0.1", "--port", "0"],
         "invalid port 0", "fed-init-port-zero", slow=True),
    case("fl-server", ["enroll", "--dir", federation(), "--site", "a b"], "site name 'a b'", "fed-enroll-bad-site-name", slow=True),
    case("fl-server", ["enroll", "--dir", federation(), "--site", "A"], "already enrolled", "fed-enroll-twice"),
    case("fl-server", ["enroll", "--dir", federation(), "--site", "B"], "give site B's public key with --public-key",
         "fed-enroll-without-the-sites-key"),
    case("fl-client", ["--kit", kit(), "--key", other_key(), "--data", data("good.tsv")],
         "is not the key enrolled for site A", "kit-with-another-key"),
    case("fl-server", ["enroll", "--dir", federation(), "--site", "B", "--public-key",
                       data("bad.pub", "ssh-rsa AAAAnotakey")], "not an OpenSSH public key", "fed-enroll-bad-public-key"),

    # -------------------------------------------------------------------- certificates and keys
    case("fl-client", ["--kit", kit(remove("ca.pem")), "--data", data("good.tsv")], "ca.pem not found",
         "cert-kit-ca-missing"),
    case("fl-client", ["--kit", kit(write("ca.pem", "not a certificate\n")), "--data", data("good.tsv")],
         "is not a PEM certificate", "cert-kit-ca-not-pem"),
    case("fl-client", ["--kit", kit(lambda p, i: expired_certificate(p, i, ca=True)), "--data", data("good.tsv")],
         "expired on", "cert-kit-ca-expired"),
    case("fl-client", ["--kit", kit(write("site.key", b"\x00garbled key\xff")), "--data", data("good.tsv")],
         "is not a usable OpenSSH private key", "cert-kit-site-key-garbled"),
    case("fl-client", ["--kit", kit(remove("site.key")), "--data", data("good.tsv")],
         "holds no private key (the site made its own): start with --key", "cert-kit-site-key-missing"),
    case("fl-server", server("--labels", LABELS, "--federation",
                             federation(lambda p, i: expired_certificate(p, i, ca=False))),
         "server.pem expired on", "cert-server-certificate-expired"),
    case("fl-server", server("--labels", LABELS, "--federation", federation(other_federations_ca)),
         "is not signed by the CA certificate", "cert-federation-wrong-ca"),
    case("fl-server", server("--labels", LABELS, "--federation", federation(write("server.key", "garbled"))),
         "is not a usable PEM private key", "cert-server-key-garbled"),

    # -------------------------------------------------------------------- ports and run directories
    case("fl-server", ["--insecure", "--labels", LABELS, "--run-dir", run_dir, "--port", busy_port],
         "is already in use", "port-in-use"),
    case("fl-sim", ["--sites", "2", "--data", data("good.tsv"), "--run-dir", data("run-is-a-file", "x")],
         "cannot create run directory", "run-dir-is-a-file", slow=True),
]


@pytest.fixture(scope="session")
def federations(tmp_path_factory) -> Path:
    """Two federations made once: `fed` (site A enrolled) and `other` (its own CA)."""
    root = tmp_path_factory.mktemp("federations")
    fed = Federation(root / "fed")
    fed.init(["127.0.0.1"], 9092)
    fed.enroll("A", generate=True)
    Federation(root / "other").init(["127.0.0.1"], 9092)
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under `root` with its type, size and modification time."""
    out = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def test_the_table_is_large_and_distinct():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) >= 30


@pytest.mark.parametrize("tool, args, fragment", CASES)
def test_bad_input(tool, args, fragment, tmp_path, federations):
    inp = Inputs(tmp_path, federations)
    try:
        argv = [a(inp) if callable(a) else a for a in args]
        before = snapshot(tmp_path)
        proc = run_cli(tool, *argv, timeout=120)
    finally:
        for sock in inp.held:
            sock.close()
    assert_clean_error(proc, fragment)
    assert snapshot(tmp_path) == before  # nothing created, nothing changed, no run directory


# ------------------------------------------------------------------ cases beyond one command
def test_huge_line_is_refused_with_bounded_memory(tmp_path):
    """A 50 MB line costs at most a few MB more than a tiny bad file: it is never read whole."""
    small = tmp_path / "small.tsv"
    small.write_text("text\tlabel\n")
    inp = Inputs(tmp_path, tmp_path)
    big = huge_line(inp)
    peak = {}
    for name, path in (("small", small), ("big", big)):
        proc = subprocess.Popen([str(BIN / "fl-client"), "--site", "A", "--insecure", "--data", str(path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
        assert os.waitstatus_to_exitcode(status) == 2, stderr
        peak[name] = usage.ru_maxrss * 1024
    assert "line longer than" in stderr
    # Reading the line whole would add 50 MB for the bytes alone (and as much again to decode it).
    assert peak["big"] - peak["small"] < 20 * 2**20, peak


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A tmpfs mounted at `path` for the block; the test is skipped where mounting is not allowed."""
    path.mkdir()
    try:
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                             text=True)
        error = out.stderr.strip() if out.returncode else ""
    except OSError as err:  # no mount command
        error = str(err)
    if error:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {error}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_run_directory(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mount:
        proc = run_cli("fl-server", "--insecure", "--labels", LABELS, "--port", free(None), "--run-dir",
                       mount / "run", timeout=120)
        assert_clean_error(proc, "read-only file system")
        assert list(mount.iterdir()) == []


def test_full_disk(tmp_path, demo_dir):
    with tmpfs(tmp_path / "full", "size=64k") as mount:
        proc = run_cli("fl-sim", "--sites", "2", "--data", demo_dir / "all.tsv", "--run-dir", mount / "run",
                       timeout=120)
        assert_clean_error(proc, "no space left on device")
        assert list(mount.iterdir()) == []


def test_unreachable_server_gives_up_after_bounded_retries(tmp_path):
    """Nothing listens on the port: bounded retries with backoff, a line per retry, one error line."""
    from common.launch import free_port

    data_file = tmp_path / "site.tsv"
    data_file.write_text(GOOD)
    port = free_port()  # closed again: connections are refused
    started = time.monotonic()
    proc = run_cli("fl-client", "--site", "A", "--insecure", "--server", f"127.0.0.1:{port}", "--data", data_file,
                   "--no-dp", "--max-retries", "2", "--max-wait", "60", timeout=90)
    took = time.monotonic() - started
    assert_clean_error(proc, f"cannot reach the server at 127.0.0.1:{port}: gave up after 3 attempts")
    assert proc.stdout.count(f"fl-client: cannot reach 127.0.0.1:{port} yet") == 2, proc.stdout
    assert took < 60, took
    import psutil  # the SuperNode it started is gone too

    assert not [p.pid for p in psutil.process_iter(["cmdline"]) if str(data_file) in " ".join(p.info["cmdline"] or [])]


def test_sigterm_stops_every_process_fl_server_started(tmp_path):
    import psutil

    from common.launch import free_port
    from tests.helpers import start, wait_for_text

    log = open(tmp_path / "server.log", "w")
    server_proc = start("fl-server", "--insecure", "--port", free_port(), "--labels", LABELS, "--run-dir",
                        tmp_path / "run", log=log)
    try:
        wait_for_text(tmp_path / "server.log", "waiting for", server_proc, timeout=90)
        family = psutil.Process(server_proc.pid).children(recursive=True)
        assert any("flower-superlink" in " ".join(p.cmdline()) for p in family)
        server_proc.terminate()  # SIGTERM, as a service manager would send
        assert server_proc.wait(timeout=60) != 0
        gone, alive = psutil.wait_procs(family, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        if server_proc.poll() is None:
            server_proc.kill()
        log.close()
