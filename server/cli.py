"""fl-server: start Flower's SuperLink for the federation and run FedSilo on it.

The SuperLink's state lives in the run directory (superlink.db); the FedSilo ServerApp is
submitted with `flwr run`, and its round lines and final report are shown here.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common.config import add_run_options, run_config_from_args
from common.errors import FedSiloError, cli_entry
from common.launch import (
    flower_env,
    flower_script,
    require_loopback,
    require_port_free,
    spawn,
    stop,
    wait_for_port,
)
from common.model import check_model
from server.run_dir import RunDir
from server.submit import finish, submit_and_stream

DESCRIPTION = """Coordinate a FedSilo federation. Starts Flower's SuperLink on HOST:PORT, waits
for --min-sites sites (started with fl-client), runs --rounds rounds of local training and
federated averaging, prints one line per round and the final classification report, and
writes everything to --run-dir."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fl-server", description=DESCRIPTION)
    p.add_argument("--host", default="127.0.0.1", help="address the SuperLink listens on [default: 127.0.0.1]")
    p.add_argument("--port", type=int, default=9092, help="port for sites (Fleet API) [default: 9092]")
    p.add_argument("--insecure", action="store_true",
                   help="plaintext gRPC/HTTP without TLS; only allowed on a loopback address")
    p.add_argument("--verbose", action="store_true", help="show Flower's own log lines too")
    add_run_options(p, keys=list(_RUN_KEYS))
    return p


# fl-server takes every run option except the simulation-only ones.
_RUN_KEYS = ("run-dir", "model", "labels", "rounds", "min-sites", "local-epochs", "batch-size",
             "learning-rate", "max-length", "trainable", "lora-r", "lora-targets", "eval-fraction",
             "seed", "text-column", "label-column")


@cli_entry("fl-server")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    cfg = run_config_from_args(args, **{"run-dir": str(run_dir)})
    cfg.require_labels()
    if not args.insecure:
        raise FedSiloError("TLS is not set up yet: pass --insecure to run plaintext on 127.0.0.1")
    require_loopback(args.host, "--insecure")
    require_port_free(args.host, args.port)
    check_model(cfg.model)
    rd = RunDir(run_dir)
    address = f"{args.host}:{args.port}"
    log_path = rd.path / "logs" / "superlink.log"
    log_path.parent.mkdir(exist_ok=True)
    superlink = spawn([flower_script("flower-superlink"), "--insecure", "--host", args.host,
                       "--port", str(args.port), "--database", str(rd.path / "superlink.db"),
                       "--disable-runtime-dependency-installation"],
                      flower_env(rd.path / ".flwr"), log_path)
    try:
        wait_for_port(args.host, args.port, superlink, 60, "the SuperLink", log_path)
        print(f"fl-server: SuperLink on {address}; run directory {rd.path}", flush=True)
        print(f"fl-server: waiting for {cfg.min_sites} site(s): fl-client --site NAME --data FILE "
              f"--server {address} --insecure", flush=True)
        summary = submit_and_stream(cfg, rd.path, address, insecure=True, verbose=args.verbose)
    finally:
        stop(superlink)
    return finish(summary, rd.path)
