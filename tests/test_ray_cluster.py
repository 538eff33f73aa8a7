"""fl-sim on an existing Ray cluster: two `ray start` nodes on 127.0.0.1, one CPU each, and
fl-sim --ray-address joins them instead of starting a Ray of its own. The run must name both
nodes, each with the virtual sites it served, and leave the cluster running (it is not fl-sim's)."""

import json
import os
import signal
import subprocess
import tempfile
import time

import psutil

from common.launch import free_port
from server import sim_resources as resources
from tests.helpers import BIN, run_cli


def _ray_start(*args: str, log) -> subprocess.Popen:
    # --block: the node lives as long as this process, so the test can stop exactly what it started
    # (`ray stop` would stop every Ray on the machine).
    return subprocess.Popen([str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus",
                             "1", "--num-gpus", "0", "--disable-usage-stats", *args],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _alive_nodes(address: str) -> int:
    proc = subprocess.run([str(BIN / "ray"), "status", "--address", address], capture_output=True, text=True,
                          timeout=60)
    active = proc.stdout.split("Active:")[-1].split("Pending:")[0] if "Active:" in proc.stdout else ""
    return sum(line.strip().startswith("1 node_") for line in active.splitlines())


def _session(leader: subprocess.Popen) -> list[psutil.Process]:
    """Every process of the session `ray start` leads (GCS, raylet, workers, ...)."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == leader.pid:
                out.append(p)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            pass
    return out


def test_fl_sim_spreads_virtual_sites_over_a_two_node_ray_cluster(tiny_model, demo_dir, tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    logs = {n: open(tmp_path / f"{n}.log", "w") for n in ("head", "worker")}
    nodes: list[subprocess.Popen] = []
    try:
        nodes.append(_ray_start("--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", temp,
                                log=logs["head"]))
        deadline = time.monotonic() + 120
        while _alive_nodes(address) < 1:
            assert time.monotonic() < deadline and nodes[0].poll() is None, (tmp_path / "head.log").read_text()
            time.sleep(2)
        nodes.append(_ray_start("--address", address, log=logs["worker"]))
        while _alive_nodes(address) < 2:
            assert time.monotonic() < deadline and nodes[1].poll() is None, (tmp_path / "worker.log").read_text()
            time.sleep(2)

        run_dir = tmp_path / "run"
        proc = run_cli("fl-sim", "--sites", 4, "--data", demo_dir / "all.tsv", "--model", tiny_model,
                       "--rounds", 1, "--trainable", "full", "--local-epochs", 1, "--batch-size", 16,
                       "--no-dp", "--head-init", "none", "--device", "cpu", "--ray-address", address,
                       "--run-dir", run_dir)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"fl-sim: on the Ray cluster at {address}; each virtual site 1 CPU, device cpu" in proc.stdout
        assert all(n.poll() is None for n in nodes)  # fl-sim left the cluster running: it is not fl-sim's
        assert _alive_nodes(address) == 2

        # Without --ray-address fl-sim's Ray is its own, even with this cluster's address in the
        # environment: the same ray.init() Flower's simulation makes starts a fresh Ray.
        own = resources.plan("cpu", 1, None, None, 2).env()
        probe = subprocess.run([str(BIN / "python"), "-c", "import ray; ray.init(num_cpus=1, include_dashboard=False); "
                                "print('GCS', ray.get_runtime_context().gcs_address); ray.shutdown()"],
                               env=os.environ | {"RAY_ADDRESS": address} | own, capture_output=True, text=True,
                               timeout=180)
        gcs = [line.split()[1] for line in probe.stdout.splitlines() if line.startswith("GCS ")]
        assert probe.returncode == 0 and gcs and gcs[0] != address, probe.stdout[-2000:] + probe.stderr[-2000:]
        assert _alive_nodes(address) == 2
    finally:
        members = [p for n in nodes for p in _session(n)]
        for n in nodes:
            os.killpg(n.pid, signal.SIGTERM)
        gone, alive = psutil.wait_procs(members, timeout=30)
        for p in alive:
            p.kill()
        for fh in logs.values():
            fh.close()

    summary = json.loads((run_dir / "summary.json").read_text())
    hardware = summary["hardware"]
    # Both nodes served sites, and together all four.
    assert len(hardware["ray_nodes"]) == 2, hardware
    assert sorted(s for sites in hardware["ray_nodes"].values() for s in sites) == [f"sim-{i}" for i in range(4)]
    assert all(entry["device"] == "cpu" and entry["peak_rss_mib"] > 100 for entry in hardware["sites"].values())
    report = (run_dir / "report.txt").read_text()
    for node in hardware["ray_nodes"]:
        assert f"Ray node {node[:12]}" in report
