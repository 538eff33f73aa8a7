"""fl-sim: the same ServerApp and ClientApp on Flower's simulation engine (Ray), one machine."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from common.cliparse import Parser
from common.config import RUN_OPTIONS, add_run_options, run_config_from_args
from common.data import encode_labels, label_set_of, partition, read_records
from common.ner_data import encode_tags, read_sentence_records, tag_set
from common.errors import FedSiloError, cli_entry
from common.fairness import add_fairness_options, fairness_from_args
from common.launch import (coordinator_env, flower_env, flower_script, free_port, private_flwr_home, spawn, stop,
                           wait_for_port)
from common.model import check_model
from common.privacy import add_privacy_options, privacy_from_args
from server.run_dir import RunDir, write_run_options
from server.sim_resources import plan
from server.submit import absolute_local_paths, finish, submit_and_stream
from server.tracking import RunFollower, add_tracking_options

DESCRIPTION = """Simulate a federation on this machine: DATA is split over N virtual sites
(IID or Dirichlet label skew) and the FedSilo app runs on Flower's simulation engine (Ray).
Each virtual site splits its share into train/eval with the seed, exactly as a real site does.
The run directory is readable by this user alone; Flower installs the app into a FLWR_HOME made
for the run (never one found on disk) and runs in it, not in the current folder."""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="fl-sim", description=DESCRIPTION)
    p.add_argument("--sites", type=int, required=True, metavar="N", help="number of virtual sites")
    p.add_argument("--data", required=True, metavar="FILE",
                   help="labelled data file (.csv, .tsv or .jsonl) to partition over the sites")
    p.add_argument("--cpus-per-site", type=int, default=1, metavar="N",
                   help="CPU cores Ray reserves per virtual site (whole cores: Flower's simulation config "
                        "holds integers); sites run concurrently when the machine or cluster has room "
                        "[default: 1]")
    p.add_argument("--gpus-per-site", type=float, default=None, metavar="F",
                   help="GPUs Ray reserves per virtual site, fractions allowed (0.25: four sites share one "
                        "GPU) [default: 0 on a machine without CUDA; else this machine's GPUs shared by "
                        "the sites that run at once; 0 with --ray-address]")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="where every virtual site computes: 'auto' (CUDA when its Ray worker sees a GPU), "
                        "'cpu' or 'cuda' [default: auto]")
    p.add_argument("--ray-address", metavar="HOST:PORT", default=None,
                   help="join the running Ray cluster whose head is HOST:PORT (as `ray start --head` "
                        "printed it) instead of starting a Ray of its own; every node needs FedSilo "
                        "installed, and the data file at the same path")
    p.add_argument("--verbose", action="store_true", help="show Flower's own log lines too")
    add_run_options(p, keys=[o.key for o in RUN_OPTIONS if not o.key.startswith("sim-")])
    add_privacy_options(p)
    add_fairness_options(p)
    add_tracking_options(p)
    return p


@cli_entry("fl-sim")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.sites < 1:
        raise FedSiloError("--sites must be at least 1")
    resources = plan(args.device, args.cpus_per_site, args.gpus_per_site, args.ray_address, args.sites)
    data = Path(args.data).expanduser().resolve()
    text_col = args.text_column or "text"
    label_col = args.label_column or "label"
    fairness = fairness_from_args(args)
    ner = args.task == "ner"  # a CoNLL file of sentences, one record each (common/ner_data.py)
    if ner:
        records = read_sentence_records(data, fairness.group_column)
    else:
        records = read_records(data, text_col, label_col, fairness.group_column)  # fail here, not in N subprocesses
    labels = args.labels or ",".join(tag_set(records) if ner else label_set_of(records))
    run_dir = Path(args.run_dir or f"runs/sim-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    absolute_local_paths(args)
    overrides = {"sim-data": str(data), "sim-device": resources.device, "labels": labels, "run-dir": str(run_dir),
                 **{f"sim-{k}": v for k, v in (privacy_from_args(args).to_node_config()
                                               | fairness.to_node_config()).items()}}
    if args.min_sites is None:
        overrides["min-sites"] = args.sites  # every virtual site is always there
    cfg = run_config_from_args(args, **overrides)
    cfg.require_labels()
    if fairness.fairness_reweight and cfg.sim_dp and cfg.trainable == "full":
        raise FedSiloError("--fairness-reweight under DP needs per-example gradients: --trainable lora or head")
    if cfg.min_sites > args.sites:
        raise FedSiloError(f"--min-sites {cfg.min_sites} is more than --sites {args.sites}")
    if args.sites > len(records):
        raise FedSiloError(f"--sites {args.sites}: the file has only {len(records)} records")
    partition(encode_labels(records, cfg.labels, str(data)) if not ner else np.zeros(len(encode_tags(
        records, cfg.labels, str(data))), dtype=np.int64), args.sites, cfg.partition, cfg.dirichlet_alpha,
        cfg.seed)  # the split every virtual site will make
    check_model(cfg.model)
    follower = RunFollower(run_dir, args.tensorboard, args.mlflow)  # a wrong tracking URI stops here
    rd = RunDir(run_dir)
    rd.make_private()
    rd.require_written_here()
    resumed = rd.resume_point(cfg) if rd.state_path.exists() else None
    write_run_options(rd.path, vars(args) | {"data": str(data), "run_dir": str(rd.path)}, tool="fl-sim")
    if resumed:
        print(f"fl-sim: resuming the run in {rd.path} after round {resumed['last_round']} of {cfg.rounds}",
              flush=True)
    print(f"fl-sim: {len(records)} {'sentences' if ner else 'records'}, {len(cfg.labels)} "
          f"{'tags' if ner else 'labels'}, {args.sites} virtual sites "
          f"({cfg.partition}), {cfg.rounds} rounds -> {rd.path}", flush=True)
    print(f"fl-sim: on {resources.describe()}", flush=True)

    port = free_port()
    log_path = rd.path / "logs" / "superlink.log"
    log_path.parent.mkdir(mode=0o700, exist_ok=True)
    with private_flwr_home(rd.path) as home:
        # The SuperLink, and Ray below it, work in `home`: Ray puts its driver's working directory
        # first on every worker's sys.path, so the current folder's packages would be imported.
        superlink = spawn([flower_script("flower-superlink"), "--simulation", "--insecure",
                           "--host", "127.0.0.1", "--port", str(port),
                           "--database", str(rd.path / "superlink.db"),
                           "--disable-runtime-dependency-installation"],
                          coordinator_env(flower_env(home)) | resources.env(), log_path, cwd=home)
        try:
            wait_for_port("127.0.0.1", port, superlink, 60, "the simulation SuperLink", log_path)
            summary = submit_and_stream(cfg, rd.path, home, f"127.0.0.1:{port}", insecure=True,
                                        federation_config=resources.federation_config(args.sites),
                                        verbose=args.verbose, follower=follower,
                                        simulation=True)
        finally:
            stop(superlink)
    return finish(summary, rd.path)

