"""Load: 30 real SuperNodes (one fl-client each) on 127.0.0.1 complete 3 rounds with one coordinator.

Marked `load`: skipped unless pytest gets --load (`make test-load`). On this 2-core, 24 GiB
machine it takes about a quarter of an hour (926 s once) and most of the memory, more than CI's time allows.

What it takes to pass here (2026-11-29), each found by a failed run:
- the SuperLink's in-memory state (`fl-server --superlink-state memory`): with SQLite, 30 sites'
  polls ran out SQLite's 5 s lock wait ("database is locked") and Flower ended the run;
- the site worker (`fl-client --site-worker`): without it each of the 60 messages a round imports
  torch and loads the model in a new process;
- one torch thread per site (`--threads 1`): 30 sites x 2 threads on 2 cores made a 24-record
  training step take 17 s instead of about 1.5 s;
- Flower's 1 s task poll (fl-client polls every 0.2 s by default): 30 sites polling 5 times a
  second kept most of a core busy while idle;
- fl-client working out the app hash in a short-lived child (60 MB less per site).
"""

import json
import os
import subprocess
import threading
import time

import psutil
import pytest

from common.demo_data import make_messages, write_tsv
from common.launch import free_port
from tests.helpers import BIN, LABELS, start, stop_all, wait_for_text

pytestmark = [pytest.mark.slow, pytest.mark.load, pytest.mark.timeout(3600)]

SITES, ROUNDS, PER_SITE = 30, 3, 30


class PeakMemory(threading.Thread):
    """Peak memory of this test's process tree (coordinator, sites, Flower's children), as the sum
    of proportional set sizes: pages shared between processes (torch's libraries) count once."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stopped = 0, threading.Event()

    def run(self):
        me = psutil.Process()
        while not self.stopped.wait(5.0):  # reading 130 processes' smaps costs CPU
            total = 0
            for proc in me.children(recursive=True):
                try:
                    total += proc.memory_full_info().pss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)


def test_thirty_supernodes_complete_three_rounds(tiny_model, tmp_path):
    rows = make_messages(SITES * PER_SITE, seed=5)
    names = [f"s{i:02d}" for i in range(1, SITES + 1)]
    port, run_dir = free_port(), tmp_path / "run"
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("server", *names)}
    monitor = PeakMemory()
    monitor.start()
    started = time.monotonic()
    # Plain aggregation: this measures how the coordinator copes with many sites; SecAgg+ at 10
    # sites is measured in bench/secagg_overhead.py.
    server = start("fl-server", "--insecure", "--port", port, "--run-dir", run_dir, "--labels", LABELS,
                   "--model", tiny_model, "--rounds", ROUNDS, "--min-sites", SITES, "--trainable", "full",
                   "--batch-size", 16, "--no-secure-aggregation", "--round-timeout", 900,
                   "--superlink-state", "memory", log=logs["server"])
    clients = []
    # 30 task launchers asking their SuperNode for work 5 times a second (fl-client's default)
    # would keep a core busy: Flower's own default of once a second is plenty here.
    env = {**os.environ, "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1"}
    try:
        wait_for_text(tmp_path / "server.log", "waiting for", server, timeout=90)
        for i, name in enumerate(names):
            data = write_tsv(tmp_path / f"{name}.tsv", rows[i * PER_SITE:(i + 1) * PER_SITE])
            # Sites would be separate machines: here they share 2 cores with the coordinator, so
            # they run at low priority (a starved ServerApp misses its heartbeats to the
            # SuperLink, which then ends the run), and start one after the other, each once its
            # worker has done its imports.
            clients.append(subprocess.Popen(
                ["nice", "-n", "15", str(BIN / "fl-client"), "--site", name, "--server", f"127.0.0.1:{port}",
                 "--insecure", "--data", str(data), "--no-dp", "--allow-unmasked-updates", "--site-worker", "--threads", "1",
                 "--allow-model", str(tiny_model),
                 # 30 idle SuperNodes asking the SuperLink twice a second would load the shared
                 # cores too: Flower's 3 s, as measured in README "Many sites on one machine"
                 "--pull-interval", "3"],
                stdout=logs[name], stderr=subprocess.STDOUT, start_new_session=True, env=env))
            wait_for_text(tmp_path / f"{name}.log", "site worker ready", clients[-1], timeout=120)
        code = server.wait(timeout=2700)
    finally:
        stop_all(server, *clients)
        monitor.stopped.set()
        for fh in logs.values():
            fh.close()
    out = (tmp_path / "server.log").read_text()
    assert code == 0, out[-4000:]
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(sorted(r["fit"]) == names and r["status"] == "ok" for r in rounds), rounds
    assert all(len(r["site_accuracy"]) == SITES for r in rounds)
    print(f"\n{SITES} SuperNodes, {ROUNDS} rounds: {time.monotonic() - started:.0f} s wall, "
          f"peak memory of all processes {monitor.peak / 2**30:.1f} GiB; "
          f"round seconds {[r['seconds'] for r in rounds]}")
