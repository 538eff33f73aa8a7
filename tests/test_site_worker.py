"""The site worker (client/worker.py): one process per fl-client keeps the model and the tokenised
data between Flower's per-message ClientApp processes, over an authenticated local socket."""

import subprocess

import numpy as np
import psutil
import pytest

from client import worker, worker_link
from common.config import RunConfig
from common.errors import FedSiloError
from common.launch import flower_env, free_port, stop
from common.model import build_model, get_weights
from common.updates import pack, unpack
from tests.helpers import BIN, LABELS, site_file


def request(op, cfg, data, tmp_path, parameters, server_round=1):
    return {"op": op, "run_id": "7", "run_config": cfg.to_flat(), "parameters": pack(parameters),
            "config": {"server-round": server_round},
            "node_config": {"site": "A", "data-path": str(data), "dp": False,
                            "ledger": str(tmp_path / "ledger.json"), "audit-log": str(tmp_path / "audit.jsonl"),
                            "audit-key": str(tmp_path / "audit.key"), "allow-model": cfg.model}}


def test_worker_loads_once_per_run_and_refuses_a_wrong_key(tiny_model, demo_dir, tmp_path, monkeypatch):
    data = site_file(demo_dir, "A", tmp_path)
    cfg = RunConfig.from_dict({"model": str(tiny_model), "labels": LABELS, "trainable": "full",
                               "batch-size": 32, "rounds": 2, "head-init": "none"})
    initial = get_weights(build_model(cfg))
    proc, env = worker.start(tmp_path, flower_env())
    try:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        packed, n, first = worker_link.call(request("fit", cfg, data, tmp_path, initial))
        delta = unpack(packed, [w.shape for w in initial])
        assert n == 160
        assert first["time_load"] > 0 and first["time_train"] > 0
        moved = [w + d for w, d in zip(initial, delta)]
        _, _, second = worker_link.call(request("fit", cfg, data, tmp_path, moved, server_round=2))
        assert second["time_load"] == 0 and second["time_tokenise"] == 0  # model and tokens kept
        loss, n_eval, metrics = worker_link.call(request("evaluate", cfg, data, tmp_path, moved))
        assert n_eval == 40 and np.isfinite(loss) and "confusion" in metrics

        # A problem the operator can fix comes back as the site's one-line error, and the
        # worker goes on serving.
        with pytest.raises(FedSiloError, match="records have labels outside the run.s label set"):
            worker_link.call(request("fit", RunConfig.from_dict({**cfg.to_flat(), "labels": "x,y"}), data, tmp_path,
                                initial))
        # Only a process that holds the key (fl-client's children) can use the worker.
        monkeypatch.setenv(worker.KEY_ENV, "00" * 32)
        with pytest.raises(FedSiloError, match="not answering"):
            worker_link.call(request("evaluate", cfg, data, tmp_path, moved))
        monkeypatch.setenv(worker.KEY_ENV, env[worker.KEY_ENV])
        assert worker_link.call(request("evaluate", cfg, data, tmp_path, moved))[1] == 40
    finally:
        stop(proc)
    with pytest.raises(FedSiloError, match="not answering"):
        worker_link.call(request("evaluate", cfg, data, tmp_path, moved))


def test_fl_client_leaves_with_one_line_when_its_worker_dies(demo_dir, tmp_path):
    data = site_file(demo_dir, "A", tmp_path)
    # No server listens there: the SuperNode keeps retrying while the worker is killed.
    client = subprocess.Popen([str(BIN / "fl-client"), "--site", "A", "--insecure", "--data", str(data), "--site-worker",
                               "--server", f"127.0.0.1:{free_port()}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        seen = []
        for line in client.stdout:  # the worker is up once fl-client starts connecting
            seen.append(line)
            if "connecting to" in line:
                break
        found = [p for p in psutil.Process(client.pid).children(recursive=True)
                 if "client.worker" in " ".join(p.cmdline())]
        assert found, "fl-client started no site worker:\n" + "".join(seen)
        found[0].kill()
        out, err = client.communicate(timeout=60)
    finally:
        stop(client)
    assert client.returncode == 2, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["fl-client: error: the site's training worker stopped (exit code -9); this site left the "
                     "federation: restart fl-client"], err
    assert "Traceback" not in out + err


def test_a_site_without_an_eval_split_trains_and_reports_no_evaluation(tiny_model, demo_dir, tmp_path):
    from client.site_round import serve

    data = site_file(demo_dir, "A", tmp_path)
    cfg = RunConfig.from_dict({"model": str(tiny_model), "labels": LABELS, "trainable": "full",
                               "eval-fraction": 0.0, "head-init": "none"})
    initial = get_weights(build_model(cfg))
    packed, n, _ = serve(request("fit", cfg, data, tmp_path, initial))
    assert n == 200 and len(unpack(packed, [w.shape for w in initial])) == len(initial)
    assert serve(request("evaluate", cfg, data, tmp_path, initial))[1] == 0


def test_virtual_sites_in_one_process_read_the_simulation_file_once(demo_dir, tmp_path):
    from client.site import _partitioned, site_data

    data = tmp_path / "all.tsv"
    data.write_bytes((demo_dir / "all.tsv").read_bytes())
    cfg = RunConfig.from_dict({"labels": LABELS, "sim-data": str(data), "run-dir": str(tmp_path / "run")})
    _partitioned.cache_clear()
    sites = [site_data(cfg, {"partition-id": i, "num-partitions": 3}) for i in range(3)]
    assert _partitioned.cache_info().misses == 1 and _partitioned.cache_info().hits == 2
    assert sum(len(s.records) for s in sites) == 600
    # A changed file is read again (the cache is keyed by its mtime and size).
    rows = data.read_text().splitlines()
    data.write_text("\n".join(rows[:301]) + "\n")
    assert sum(len(site_data(cfg, {"partition-id": i, "num-partitions": 3}).records) for i in range(3)) == 300


def test_virtual_sites_in_one_process_share_the_run_model_without_sharing_results(tiny_model, demo_dir, tmp_path):
    """A simulation actor serves many virtual sites in turn: the tokenizer and model are loaded once
    per run, and a site's update is the same whichever site the process served before it."""
    from client import site_round

    data = tmp_path / "all.tsv"
    data.write_bytes((demo_dir / "all.tsv").read_bytes())

    def sim_request(op, run_dir, pid, parameters):
        cfg = RunConfig.from_dict({"model": str(tiny_model), "labels": LABELS, "sim-data": str(data),
                                   "run-dir": str(run_dir), "batch-size": 32,
                                   # without DP training is seeded, so equal updates mean no shared state
                                   # (DP noise is each site's own draw: tests/test_dp_noise.py)
                                   "sim-dp": False})
        return {"op": op, "run_id": "9", "run_config": cfg.to_flat(), "parameters": pack(parameters),
                "config": {"server-round": 1}, "node_config": {"partition-id": pid, "num-partitions": 3}}

    initial = get_weights(build_model(RunConfig.from_dict({"model": str(tiny_model), "labels": LABELS})))
    site_round._run = site_round._current = None
    alone, n_alone, _ = site_round.serve(sim_request("fit", tmp_path / "alone", 0, initial))  # site 0 first

    site_round._run = site_round._current = None
    _, _, first = site_round.serve(sim_request("fit", tmp_path / "shared", 1, initial))
    model = site_round._run[1].model
    after, n_after, second = site_round.serve(sim_request("fit", tmp_path / "shared", 0, initial))
    assert site_round._run[1].model is model  # loaded once for both sites (a timing check here was flaky under load)
    assert n_after == n_alone and all(np.array_equal(a, b) for a, b in zip(alone, after))
