"""Bad input at the command line: one clear line on stderr, a non-zero exit, nothing half-written."""

import socket

import pytest

from tests.helpers import LABELS, assert_clean_error, run_cli


@pytest.fixture()
def files(tmp_path):
    paths = {
        "missing": tmp_path / "nope.tsv",
        "empty": tmp_path / "empty.tsv",
        "nocol": tmp_path / "nocol.tsv",
        "latin1": tmp_path / "latin1.tsv",
        "badlabel": tmp_path / "badlabel.tsv",
        "good": tmp_path / "good.tsv",
        "unreadable": tmp_path / "unreadable.tsv",
    }
    paths["empty"].write_text("")
    paths["nocol"].write_text("message\tlabel\nhello\tcard\n")
    paths["latin1"].write_bytes("text\tlabel\ncaf\xe9 card\tcard\n".encode("latin-1"))
    paths["badlabel"].write_text("text\tlabel\na\tcard\nb\tmortgage\n")
    paths["good"].write_text("text\tlabel\n" + "".join(f"text {i}\t{LABELS.split(',')[i % 4]}\n" for i in range(20)))
    paths["unreadable"].mkdir()  # a folder where a file is expected
    return paths


@pytest.mark.parametrize("key, extra, fragment", [
    ("missing", [], "data file not found"),
    ("empty", [], "data file is empty"),
    ("nocol", [], "missing column 'text'"),
    ("latin1", [], "not valid UTF-8"),
    ("badlabel", ["--labels", LABELS], "'mortgage' not in the run's label set"),
    ("good", ["--sites", "50"], "has only 20 records"),
    ("good", ["--model", "nobody/no-such-bert"], "cannot load model 'nobody/no-such-bert'"),
    ("good", ["--rounds", "0"], "rounds: must be >= 1"),
    ("good", ["--labels", "card"], "at least two labels"),
    ("good", ["--partition", "dirichlet", "--dirichlet-alpha", "0.001", "--sites", "10"], "dirichlet-alpha"),
])
def test_fl_sim_bad_input(files, tmp_path, key, extra, fragment):
    run_dir = tmp_path / "run"
    args = ["--sites", "2", "--data", files[key], "--run-dir", run_dir, *extra]
    proc = run_cli("fl-sim", *args, timeout=120)
    assert_clean_error(proc, fragment)
    assert not run_dir.exists()  # nothing half-written


def test_fl_server_port_in_use(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = run_cli("fl-server", "--insecure", "--port", port, "--labels", LABELS,
                       "--run-dir", tmp_path / "run", timeout=60)
    assert_clean_error(proc, f"port {port} on 127.0.0.1 is already in use")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, fragment", [
    (["--insecure"], "at least two labels"),
    (["--insecure", "--labels", LABELS, "--host", "0.0.0.0"], "plaintext is allowed on 127.0.0.1 only"),
    (["--labels", LABELS], "give --federation DIR"),
    (["--labels", LABELS, "--federation", "/no/such/federation"], "is not a federation folder"),
    (["--insecure", "--labels", LABELS, "--min-sites", "1"], "secure aggregation needs min-sites >= secagg-threshold"),
    (["--insecure", "--labels", LABELS, "--model", "/no/such/dir"], "cannot load model"),
])
def test_fl_server_bad_options(tmp_path, extra, fragment):
    proc = run_cli("fl-server", "--port", "0", "--run-dir", tmp_path / "run", *extra, timeout=60)
    assert_clean_error(proc, fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, extra, fragment", [
    ("missing", ["--insecure"], "data file not found"),
    ("nocol", ["--insecure"], "missing column 'text'"),
    ("unreadable", ["--insecure"], "data file not found"),
    ("good", ["--insecure", "--server", "10.1.2.3:9092"], "plaintext is allowed on 127.0.0.1 only"),
    ("good", ["--insecure", "--server", "nocolon"], "invalid address"),
    ("good", ["--insecure", "--site", "a b"], "--site"),
])
def test_fl_client_bad_input(files, key, extra, fragment):
    args = ["--data", files[key], *extra]
    if "--site" not in extra:
        args = ["--site", "A", *args]
    assert_clean_error(run_cli("fl-client", *args, timeout=60), fragment)


@pytest.mark.parametrize("extra, fragment", [
    (["--kit", "/no/such/kit"], "is not a site kit"),
    (["--target-epsilon", "0"], "target-epsilon: must be >="),
    (["--target-epsilon", "9", "--privacy-budget", "8"], "larger than the privacy-budget"),
    (["--delta", "0.09"], "not below 1/n"),
    (["--redact-entities", "EMAIL,SHOESIZE"], "SHOESIZE"),
])
def test_fl_client_bad_site_settings(files, extra, fragment):
    args = ["--data", files["good"], *extra]
    if "--kit" not in extra:
        args = ["--site", "A", "--insecure", *args]
    assert_clean_error(run_cli("fl-client", *args, timeout=60), fragment)


def test_fl_client_bad_ledger_and_redaction_config(files, tmp_path):
    ledger = tmp_path / "ledger.json"
    ledger.write_text("{broken")
    base = ["--site", "A", "--insecure", "--data", files["good"]]
    assert_clean_error(run_cli("fl-client", *base, "--ledger", ledger, timeout=60), "unreadable or corrupted")
    assert ledger.read_text() == "{broken"  # never reset
    config = tmp_path / "redact.json"
    config.write_text('{"entities": ["EMAIL"')
    assert_clean_error(run_cli("fl-client", *base, "--redaction-config", config, timeout=60), "redact.json")


def test_fl_server_enroll_and_init_errors(tmp_path):
    assert_clean_error(run_cli("fl-server", "enroll", "--dir", tmp_path / "none", "--site", "A"),
                       "is not a federation folder")
    assert run_cli("fl-server", "init", "--dir", tmp_path / "fed", "--host", "127.0.0.1").returncode == 0
    assert_clean_error(run_cli("fl-server", "init", "--dir", tmp_path / "fed", "--host", "127.0.0.1"),
                       "already holds a federation")
    assert_clean_error(run_cli("fl-server", "enroll", "--dir", tmp_path / "fed", "--site", "a b"), "site name")
    assert run_cli("fl-server", "enroll", "--dir", tmp_path / "fed", "--site", "A").returncode == 0
    assert_clean_error(run_cli("fl-server", "enroll", "--dir", tmp_path / "fed", "--site", "A"), "already enrolled")
    bad_pub = tmp_path / "bad.pub"
    bad_pub.write_text("ssh-rsa AAAAnotakey")
    assert_clean_error(run_cli("fl-server", "enroll", "--dir", tmp_path / "fed", "--site", "B", "--public-key", bad_pub),
                       "not an OpenSSH public key")


def test_fl_predict_without_final_model(tmp_path):
    assert_clean_error(run_cli("fl-predict", tmp_path, "--text", "hi"), "no final model")
    assert_clean_error(run_cli("fl-predict", tmp_path / "nope", "--text", "hi"), "not a run directory")


def test_sigterm_stops_every_process_fl_server_started(tmp_path):
    import psutil

    from common.launch import free_port
    from tests.helpers import start, wait_for_text

    log = open(tmp_path / "server.log", "w")
    server = start("fl-server", "--insecure", "--port", free_port(), "--labels", LABELS, "--run-dir",
                   tmp_path / "run", log=log)
    try:
        wait_for_text(tmp_path / "server.log", "waiting for", server, timeout=90)
        family = psutil.Process(server.pid).children(recursive=True)
        assert any("flower-superlink" in " ".join(p.cmdline()) for p in family)
        server.terminate()  # SIGTERM, as a service manager would send
        assert server.wait(timeout=60) != 0
        gone, alive = psutil.wait_procs(family, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        if server.poll() is None:
            server.kill()
        log.close()
