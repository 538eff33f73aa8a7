"""The secure path for real: TLS, enrolled site keys, the Fleet-only gateway, the app guard and
SecAgg+ — a real SuperLink, gateway and SuperNodes on 127.0.0.1, and every refusal checked."""

import json
import shutil
import socket
import ssl
import subprocess

import psutil
import pytest

from common.config import RunConfig, write_run_config_toml
from common.demo_data import write_demo
from common.launch import flower_env, free_port, write_flwr_home
from common.pki import make_node_key
from tests.helpers import BIN, LABELS, ROOT, run_cli, site_file, start, stop_all, wait_for_text

pytestmark = pytest.mark.slow

TRAIN = ["--model", None, "--trainable", "full", "--learning-rate", 3e-3, "--local-epochs", 4, "--batch-size", 16]


def train_args(tiny_model):
    return [str(tiny_model) if a is None else a for a in TRAIN]


def provision(tmp_path, sites, port, own_keys=()):
    """A federation with `sites` enrolled: those in `own_keys` made their key pair themselves
    (tmp_path/NAME.key, the default flow: the coordinator gets only the public half), the others
    had the coordinator make it (--generate-site-key)."""
    fed = tmp_path / "fed"
    assert run_cli("fl-server", "init", "--dir", fed, "--host", "127.0.0.1", "--port", port).returncode == 0
    for site in sites:
        if site in own_keys:
            assert run_cli("fl-client", "--make-key", tmp_path / f"{site}.key").returncode == 0
            key = ["--public-key", tmp_path / f"{site}.key.pub"]
        else:
            key = ["--generate-site-key"]
        assert run_cli("fl-server", "enroll", "--dir", fed, "--site", site, *key).returncode == 0
    return fed


def control_home(run_dir):
    """The coordinator's own Flower home for this run (a private folder, fresh per run), whose
    config.toml reaches the SuperLink's control plane on loopback."""
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        homes = [p for p in run_dir.glob(".flwr-*") if (p / "config.toml").exists()]
        if homes:
            return homes[0]
        time.sleep(0.5)
    raise AssertionError(f"no Flower home with a config.toml in {run_dir}")


def refused(proc, fragment):
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert fragment in out, out[-2000:]
    return out


def test_secure_federation_and_every_refusal(tiny_model, demo_dir, tmp_path):
    port = free_port()
    fed = provision(tmp_path, ["A", "B"], port, own_keys=["B"])
    assert not (fed / "kits" / "B" / "site.key").exists()  # the coordinator never held B's private key
    # A kit whose key was never enrolled, and one that trusts another federation's CA.
    stray = shutil.copytree(fed / "kits" / "A", tmp_path / "stray-kit")
    (stray / "site.key").unlink()
    (stray / "site.key.pub").unlink()
    make_node_key(stray / "site.key")
    run_cli("fl-server", "init", "--dir", tmp_path / "other", "--host", "127.0.0.1")
    wrong_ca = shutil.copytree(fed / "kits" / "A", tmp_path / "wrong-ca-kit")
    shutil.copyfile(tmp_path / "other" / "ca.pem", wrong_ca / "ca.pem")

    run_dir = tmp_path / "run"
    (tmp_path / "refused").mkdir()
    logs = {n: open(tmp_path / f"{n}.log", "w") for n in ("server", "A", "B")}
    server = start("fl-server", "--federation", fed, "--labels", LABELS, "--rounds", 2, "--run-dir", run_dir,
                   *train_args(tiny_model), log=logs["server"])
    sites = []
    try:
        wait_for_text(tmp_path / "server.log", "waiting for", server, timeout=90)

        # The endpoint speaks TLS 1.2+ only, with the federation's certificate.
        ctx = ssl.create_default_context(cafile=str(fed / "ca.pem"))
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(fed / "ca.pem")],
                             input="", capture_output=True, text=True, timeout=30).stdout
        assert "Verify return code: 0 (ok)" in out and ("TLSv1.3" in out or "TLSv1.2" in out)

        data_a = site_file(demo_dir, "A", tmp_path / "refused")
        own_log = iter(tmp_path / "refused" / f"audit-{i}.jsonl" for i in range(3))  # one identity per log
        refused(run_cli("fl-client", "--kit", stray, "--data", data_a, "--no-dp", "--audit-log", next(own_log),
                        timeout=120), "this site's key is not enrolled in the federation")
        refused(run_cli("fl-client", "--kit", wrong_ca, "--data", data_a, "--no-dp", "--max-wait", 20,
                        "--audit-log", next(own_log), timeout=120), "not signed by the CA in this kit")
        refused(run_cli("fl-client", "--site", "A", "--insecure", "--server", f"127.0.0.1:{port}", "--data", data_a,
                        "--no-dp", "--max-wait", 10, "--audit-log", next(own_log), timeout=120),
                "cannot reach the server")

        # A site with its own valid kit tries the control plane through the address it was given.
        home = tmp_path / "site-flwr-home"
        write_flwr_home(home, f"127.0.0.1:{port}", insecure=False, root_cert=str(fed / "kits" / "A" / "ca.pem"))
        env = flower_env(home)
        for cmd in (["run", str(ROOT), "fedsilo"],
                    ["supernode", "register", str(fed / "kits" / "A" / "site.key.pub"), "fedsilo"],
                    ["ls", "fedsilo"]):
            refused(subprocess.run([str(BIN / "flwr"), *cmd], env=env, capture_output=True, text=True, timeout=120),
                    "only the Fleet API is served to sites")

        # Someone with the coordinator's control plane submits a modified app: sites refuse to run it.
        modified = tmp_path / "modified-app"
        for part in ("server", "client", "common"):
            shutil.copytree(ROOT / part, modified / part, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copyfile(ROOT / "pyproject.toml", modified / "pyproject.toml")
        with open(modified / "client" / "app.py", "a") as fh:
            fh.write("\n# an innocent-looking change\n")
        mod_cfg = RunConfig.from_dict({"labels": LABELS, "model": str(tiny_model), "rounds": 1, "min-sites": 2,
                                       "secure-aggregation": False, "run-dir": str(tmp_path / "modified-run")})
        submitted = subprocess.run([str(BIN / "flwr"), "run", str(modified), "fedsilo", "--run-config",
                                    str(write_run_config_toml(mod_cfg, tmp_path / "mod.toml"))],
                                   env=flower_env(control_home(run_dir)), capture_output=True, text=True,
                                   timeout=120)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr

        for name in ("A", "B"):
            own_key = ["--key", tmp_path / "B.key"] if name == "B" else []
            sites.append(start("fl-client", "--kit", fed / "kits" / name, *own_key, "--data",
                               site_file(demo_dir, name, tmp_path), "--no-dp", "--allow-model", tiny_model,
                               log=logs[name]))
        wait_for_text(tmp_path / "modified-run" / "metrics.jsonl", "app not approved by this site", timeout=400)
        assert server.wait(timeout=600) == 0, (tmp_path / "server.log").read_text()[-4000:]
    finally:
        stop_all(server, *sites)
        for fh in logs.values():
            fh.close()

    out = (tmp_path / "server.log").read_text()
    assert out.count("Secure aggregation completed") >= 2
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rounds] == ["ok", "ok"] and sorted(rounds[-1]["fit"]) == ["A", "B"]
    assert rounds[-1]["accuracy"] > 0.6, rounds
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["secure_aggregation"] is True and summary["rounds_completed"] == [1, 2]
    # Site names come from enrolment (node id -> name), not from what a site says of itself.
    assert sorted(json.loads((run_dir / "sites.json").read_text()).values()) == ["A", "B"]
    # A site's audit trail is signed with a key of its own, not the node key the coordinator made for A.
    audit_start = json.loads((tmp_path / "site-A.tsv.audit.jsonl").read_text().splitlines()[0])
    node_key = (fed / "kits" / "A" / "site.key.pub").read_text().split()[:2]
    assert audit_start["data"]["public_key"].split()[:2] != node_key


def wait_for_any(tmp_path, names, text, server, timeout):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in (tmp_path / f"{n}.log").read_text(errors="replace") for n in names):
            return
        assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no site log shows {text!r}")


def kill_site(proc):
    """SIGKILL a site: fl-client, its SuperNode and whatever ClientApp is running."""
    # children() already hands back Process objects: building new ones from their pids raced with a
    # child that exits in between (a ClientApp finishing its round).
    try:
        family = [proc, *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = [proc]
    for p in family:
        try:
            p.kill()
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    proc.wait()


@pytest.mark.faults
def test_secagg_survives_one_dropout_and_reports_too_many(tiny_model, demo_dir, tmp_path):
    port = free_port()
    names = ["A", "B", "C", "D"]
    fed = provision(tmp_path, names, port)
    data = tmp_path / "data"
    write_demo(data, sites=4, per_site=120, seed=5)
    run_dir = tmp_path / "run"
    logs = {n: open(tmp_path / f"{n}.log", "w") for n in ("server", *names)}
    server = start("fl-server", "--federation", fed, "--labels", LABELS, "--rounds", 2, "--min-sites", 4,
                   "--secagg-threshold", 2, "--round-timeout", 75, "--run-dir", run_dir, *train_args(tiny_model),
                   "--head-init", "none", log=logs["server"])  # the drop is timed against round 1's training
    sites = {}
    try:
        wait_for_text(tmp_path / "server.log", "waiting for", server, timeout=90)
        for name in names:
            sites[name] = start("fl-client", "--kit", fed / "kits" / name, "--data", data / f"site-{name}.tsv",
                                "--no-dp", "--allow-model", tiny_model, log=logs[name])
        # One of four drops while the round's training runs (after the key exchange): the others finish it.
        wait_for_any(tmp_path, names, "round 1: trained on", server, timeout=400)
        kill_site(sites["D"])
        wait_for_text(tmp_path / "server.log", "Secure aggregation commencing", server, timeout=400, count=2)
        kill_site(sites["B"])
        kill_site(sites["C"])  # now only A is left: below the threshold
        code = server.wait(timeout=600)
    finally:
        stop_all(server, *sites.values())
        for fh in logs.values():
            fh.close()

    out = (tmp_path / "server.log").read_text()
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds[0]["status"] == "ok" and "D" not in rounds[0]["fit"] and len(rounds[0]["fit"]) == 3, rounds[0]
    assert rounds[1]["status"] == "failed", rounds[1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "secure aggregation halted" in summary["rounds_failed"]["2"]
    assert "round 2/2 | FAILED (model unchanged)" in out
    assert not (run_dir / "rounds" / "round-0002.npz").exists()  # the previous global model is kept
    assert code == 0  # one round succeeded; the failure is reported, not silent
