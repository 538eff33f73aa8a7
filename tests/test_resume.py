"""fl-server killed with SIGKILL mid-round and resumed: nothing finished is lost, nothing is left running,
and the final model matches an uninterrupted run of the same configuration."""

import json
import os
import signal
import time

import numpy as np
import psutil
import pytest

from common.audit import verify_log
from common.launch import COORDINATOR_ENV, free_port, port_free, process_identity
from tests.helpers import LABELS, site_file, start, stop_all, wait_for_text

pytestmark = pytest.mark.slow

ROUNDS = 3


def server_args(tiny_model, port, run_dir):
    return ["--insecure", "--port", port, "--run-dir", run_dir, "--labels", LABELS, "--model", tiny_model,
            "--rounds", ROUNDS, "--trainable", "full", "--learning-rate", 3e-3, "--local-epochs", 2,
            "--batch-size", 16, "--no-secure-aggregation", "--round-timeout", 300,
            # server momentum: its buffer must survive the kill too, or round 2's step differs
            "--server-momentum", 0.5]


def start_sites(demo_dir, tmp_path, port, tag, logs, tiny_model):
    procs = []
    for name in ("A", "B"):
        logs[name] = open(tmp_path / f"{tag}-{name}.log", "w")
        data = site_file(demo_dir, name, tmp_path / tag)
        procs.append(start("fl-client", "--site", name, "--server", f"127.0.0.1:{port}", "--insecure",
                           "--data", data, "--no-dp", "--allow-unmasked-updates", "--allow-model", tiny_model,
                           log=logs[name]))
    return procs


def processes_of(coordinator: str, run_dir) -> list[str]:
    """Processes started (directly or further down) by the coordinator `coordinator`, or naming
    its run directory: the SuperLink, the gateway, `flwr run`, and the ServerApp."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            env = proc.environ().get(COORDINATOR_ENV)
        except psutil.Error:
            continue
        if env == coordinator or str(run_dir) in cmd and "pytest" not in cmd:
            found.append(cmd[:160])
    return found


def final_weights(run_dir):
    with np.load(run_dir / "rounds" / f"round-{ROUNDS:04d}.npz") as npz:
        return [npz[k] for k in sorted(npz.files, key=lambda k: int(k.split("_")[1]))]


def test_killed_server_resumes_after_its_last_round(tiny_model, demo_dir, tmp_path):
    for tag in ("killed", "reference"):
        (tmp_path / tag).mkdir()
    port, run_dir = free_port(), tmp_path / "killed" / "run"
    logs = {"server": open(tmp_path / "server-1.log", "w")}
    server = start("fl-server", *server_args(tiny_model, port, run_dir), log=logs["server"])
    sites, resumed = [], None
    try:
        wait_for_text(tmp_path / "server-1.log", "waiting for", server, timeout=90)
        sites = start_sites(demo_dir, tmp_path, port, "killed", logs, tiny_model)
        # Round 1 is finished and round 2 has just been sent to the sites: kill -9 now.
        wait_for_text(tmp_path / "server-1.log", f"round 1/{ROUNDS} |", server, timeout=300)
        coordinator = process_identity(server.pid)
        before = processes_of(coordinator, run_dir)
        assert any("flwr-serverapp" in cmd for cmd in before), before  # the watch can see the ServerApp
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=30)

        # Everything the coordinator started went with it, the ServerApp too: the port is free and
        # no process is left that could write into the run directory.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not port_free("127.0.0.1", port) or processes_of(coordinator, run_dir)):
            time.sleep(0.5)
        assert port_free("127.0.0.1", port) and not processes_of(coordinator, run_dir), processes_of(coordinator, run_dir)
        state = json.loads((run_dir / "state.json").read_text())
        assert state["last_round"] == 1 and state["completed_rounds"] == [1]
        assert not (run_dir / "summary.json").exists()

        # The same sites are still running; they reconnect to the restarted coordinator.
        logs["server2"] = open(tmp_path / "server-2.log", "w")
        resumed = start("fl-server", "resume", run_dir, log=logs["server2"])
        assert resumed.wait(timeout=600) == 0, (tmp_path / "server-2.log").read_text()[-4000:]
    finally:
        stop_all(*(p for p in (server, resumed) if p), *sites)
    out = (tmp_path / "server-2.log").read_text()
    assert f"resuming the run in {run_dir} after round 1 of {ROUNDS}" in out
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3] and all(sorted(r["fit"]) == ["A", "B"] for r in rounds)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["rounds_completed"] == [1, 2, 3]
    assert summary["resumed_after_round"] == 1
    audit = verify_log(run_dir / "audit.jsonl")
    assert audit.ok, audit
    kinds = [json.loads(line)["kind"] for line in (run_dir / "audit.jsonl").read_text().splitlines()]
    assert kinds.count("run_start") == 1 and kinds.count("run_resume") == 1

    # An uninterrupted run of the same configuration ends with the same model (training is seeded
    # by run seed and round; only the order of floating-point sums may differ).
    port2, ref_dir = free_port(), tmp_path / "reference" / "run"
    logs["ref"] = open(tmp_path / "server-ref.log", "w")
    ref = start("fl-server", *server_args(tiny_model, port2, ref_dir), log=logs["ref"])
    ref_sites = []
    try:
        wait_for_text(tmp_path / "server-ref.log", "waiting for", ref, timeout=90)
        ref_sites = start_sites(demo_dir, tmp_path, port2, "reference", logs, tiny_model)
        assert ref.wait(timeout=600) == 0
    finally:
        stop_all(ref, *ref_sites)
        for fh in logs.values():
            fh.close()
    for got, want in zip(final_weights(run_dir), final_weights(ref_dir)):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    ref_rounds = [json.loads(line) for line in (ref_dir / "metrics.jsonl").read_text().splitlines()]
    assert abs(ref_rounds[-1]["accuracy"] - rounds[-1]["accuracy"]) <= 0.02
