"""fl-server: provision a federation and coordinate its runs.

    fl-server init   --dir FED --host NAME_OR_IP [--port 9092]   CA, server certificate, keys
    fl-server enroll --dir FED --site A [--public-key A.pub]      a site's key and kit
    fl-server [run]  --federation FED --labels ...                 TLS, enrolled sites, SecAgg+
    fl-server [run]  --insecure --labels ...                       plaintext on 127.0.0.1 only
    fl-server resume RUN_DIR                                       continue a killed run

Every run writes a checkpoint after each round. Started again with the same options and
--run-dir (or with `fl-server resume RUN_DIR`), a killed run goes on after its last finished
round; the sites keep running and reconnect by themselves.

A run starts Flower's SuperLink on 127.0.0.1 only (its Control API must never face sites),
registers every enrolled site's key with it, opens the gateway (server/gateway.py) on the
public address for the Fleet API alone, submits the FedSilo app with `flwr run`, and shows the
round lines and the final report. Everything is written to --run-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common.cliparse import Parser, port_arg, port_or_zero_arg
from common.config import add_run_options, run_config_from_args
from common.errors import FedSiloError, cli_entry
from common.files import atomic_write_json
from common.launch import (
    coordinator_env,
    flower_env,
    flower_script,
    free_port,
    require_loopback,
    require_port_free,
    spawn,
    split_address,
    stop,
    wait_for_port,
    write_flwr_home,
)
from server.federation import Federation
from server.run_dir import RunDir
from server.submit import finish, submit_and_stream

COMMANDS = ("init", "enroll", "run", "resume")

# fl-server takes every run option except the simulation-only ones.
_RUN_KEYS = ("run-dir", "model", "labels", "rounds", "min-sites", "local-epochs", "batch-size",
             "learning-rate", "head-learning-rate", "max-length", "trainable", "lora-r", "lora-targets", "eval-fraction",
             "seed", "text-column", "label-column", "secure-aggregation", "secagg-threshold", "secagg-neighbours",
             "round-timeout", "aggregation", "trim-fraction", "byzantine-sites", "server-learning-rate",
             "server-momentum", "max-update-norm")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="fl-server", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", metavar="{init,enroll,run,resume}")

    init = sub.add_parser("init", help="create a federation folder: CA, server certificate, server key")
    init.add_argument("--dir", required=True, help="federation folder to create")
    init.add_argument("--host", action="append", required=True,
                      help="host name or IP address sites use to reach the server (repeatable; the first "
                           "goes into site kits)")
    init.add_argument("--port", type=port_arg, default=9092, help="port sites connect to [default: 9092]")

    enroll = sub.add_parser("enroll", help="enroll a site: its key pair and a kit to hand over")
    enroll.add_argument("--dir", required=True, help="the federation folder")
    enroll.add_argument("--site", required=True, help="the site's name")
    enroll.add_argument("--public-key", help="import the site's own OpenSSH public key instead of "
                                             "generating a key pair (the site keeps its private key)")

    run = sub.add_parser("run", help="run the federation (the default command)")
    run.add_argument("--federation", metavar="DIR", help="federation folder (TLS and enrolled sites)")
    run.add_argument("--insecure", action="store_true",
                     help="plaintext without TLS or site keys; only on a loopback address")
    run.add_argument("--host", help="address the gateway listens on [default: the federation's, or 127.0.0.1]")
    run.add_argument("--port", type=port_or_zero_arg, help="port sites connect to [default: the federation's, or 9092]")
    run.add_argument("--verbose", action="store_true", help="show Flower's own log lines too")
    run.add_argument("--superlink-state", choices=("sqlite", "memory"), default="sqlite",
                     help="where the SuperLink keeps its state: 'sqlite' (RUN_DIR/superlink.db, inspectable "
                          "afterwards) or 'memory' (no database locks: for many sites on a busy machine, where "
                          "SQLite's 5 s lock wait can run out). FedSilo's own state (state.json) is the same "
                          "either way, so resume works with both [default: sqlite]")
    add_run_options(run, keys=list(_RUN_KEYS))

    resume = sub.add_parser("resume", help="continue a killed run from its run directory, with the "
                                           "options it was started with")
    resume.add_argument("run_dir", metavar="RUN_DIR", help="the run directory of the killed run")
    return p


@cli_entry("fl-server")
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    if args.command == "init":
        fed = Federation(args.dir)
        fed.init(args.host, args.port)
        print(f"fl-server: federation created in {fed.path} (sites connect to {fed.meta()['address']}); "
              f"enroll sites with: fl-server enroll --dir {fed.path} --site NAME")
        return 0
    if args.command == "enroll":
        kit = Federation(args.dir).enroll(args.site, Path(args.public_key) if args.public_key else None)
        print(f"fl-server: site {args.site} enrolled; hand {kit} to the site "
              f"(it starts with: fl-client --kit {kit} --data FILE)")
        return 0
    if args.command == "resume":
        return run(resume_args(Path(args.run_dir)))
    args.argv = argv[1:]
    return run(args)


def resume_args(run_dir: Path) -> argparse.Namespace:
    """The options a run in `run_dir` was started with (RUN_DIR/command.json)."""
    try:
        saved = json.loads((run_dir / "command.json").read_text(encoding="utf-8"))
        cwd, argv = saved["cwd"], list(saved["argv"])
    except FileNotFoundError:
        raise FedSiloError(f"{run_dir} is not the run directory of an fl-server run (no command.json)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FedSiloError(f"{run_dir}/command.json is damaged ({err})") from None
    if not (run_dir / "state.json").exists():
        raise FedSiloError(f"{run_dir}: the run finished no round yet; start it again with its options")
    os.chdir(cwd)  # relative paths in the saved options are relative to where it was started
    args = build_parser().parse_args(["run", *argv, "--run-dir", str(run_dir.resolve())])
    args.argv = argv
    return args


def run(args) -> int:
    run_dir = Path(args.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if args.federation and args.insecure:
        raise FedSiloError("--federation and --insecure exclude each other")
    if not args.federation and not args.insecure:
        raise FedSiloError("give --federation DIR (TLS, enrolled sites; see fl-server init) or --insecure "
                           "(plaintext on 127.0.0.1 only)")
    fed, meta = None, {}
    if args.federation:
        fed = Federation(args.federation)
        meta = fed.check()
        if not fed.enrolled():
            raise FedSiloError(f"no site is enrolled in {fed.path} (fl-server enroll --dir {fed.path} --site NAME)")
    overrides = {"run-dir": str(run_dir)}
    if fed:
        overrides["audit-key"] = str(fed.path / "server-audit.key")  # the coordinator's enrolled identity
    cfg = run_config_from_args(args, **overrides)
    cfg.require_labels()
    default_host, default_port = split_address(meta.get("address", "127.0.0.1:9092"))
    host, port = args.host or default_host, args.port or default_port
    if args.insecure:
        require_loopback(host, "--insecure")
    require_port_free(host, port)
    from common.model import check_model  # imports torch: only for a run, not for init / enroll / refusals

    check_model(cfg.model)
    resumed = RunDir(run_dir).resume_point(cfg) if (run_dir / "state.json").exists() else None
    rd = RunDir(run_dir)
    # What `fl-server resume` restarts with (it adds --run-dir; argparse takes the last one).
    atomic_write_json(rd.path / "command.json", {"cwd": os.getcwd(), "argv": args.argv})
    if resumed:
        print(f"fl-server: resuming the run in {rd.path} after round {resumed['last_round']} of {cfg.rounds}",
              flush=True)
    with Coordinator(rd, fed, host, port, args.superlink_state) as coordinator:
        print(f"fl-server: sites connect to {host}:{port} ({'TLS' if fed else 'plaintext'}); run directory {rd.path}",
              flush=True)
        hint = "fl-client --kit KIT --data FILE" if fed else f"fl-client --site NAME --data FILE --server {host}:{port} --insecure"
        print(f"fl-server: waiting for {cfg.min_sites} site(s): {hint}", flush=True)
        summary = submit_and_stream(cfg, rd.path, coordinator.control_address, insecure=fed is None,
                                    root_cert=str(fed.ca) if fed else None, verbose=args.verbose)
    return finish(summary, rd.path)


class Coordinator:
    """SuperLink on loopback (+ the gateway and the enrolled keys, with TLS); stopped on exit."""

    def __init__(self, rd: RunDir, fed: Federation | None, host: str, port: int, state: str = "sqlite"):
        self.rd, self.fed, self.host, self.port = rd, fed, host, port
        self.database = str(rd.path / "superlink.db") if state == "sqlite" else ":flwr-in-memory:"
        self.procs: list[subprocess.Popen] = []
        self.control_address = ""

    def __enter__(self) -> "Coordinator":
        logs = self.rd.path / "logs"
        logs.mkdir(exist_ok=True)
        env = coordinator_env(flower_env(self.rd.path / ".flwr"))
        try:
            if self.fed is None:
                self._superlink(["--insecure"], self.host, self.port, env, logs)
            else:
                inner = free_port()
                fed = self.fed
                self._superlink(["--ssl-ca-certfile", str(fed.ca), "--ssl-certfile", str(fed.server_cert),
                                 "--ssl-keyfile", str(fed.server_key), "--enable-supernode-auth"],
                                "127.0.0.1", inner, env, logs)
                self._register_sites()
                gateway = spawn([sys.executable, "-m", "server.gateway", "--listen", f"{self.host}:{self.port}",
                                 "--upstream", f"127.0.0.1:{inner}", "--cert", str(fed.server_cert),
                                 "--key", str(fed.server_key), "--ca", str(fed.ca)], env, logs / "gateway.log")
                self.procs.append(gateway)
                wait_for_port(self.host, self.port, gateway, 30, "the gateway", logs / "gateway.log")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _superlink(self, tls: list[str], host: str, port: int, env: dict, logs: Path) -> None:
        proc = spawn([flower_script("flower-superlink"), *tls, "--host", host, "--port", str(port),
                      "--database", self.database,
                      "--disable-runtime-dependency-installation"], env, logs / "superlink.log")
        self.procs.append(proc)
        wait_for_port(host, port, proc, 60, "the SuperLink", logs / "superlink.log")
        self.control_address = f"{host}:{port}"

    def _register_sites(self) -> None:
        """Register every enrolled key over the loopback Control API; remember node id -> site."""
        home = self.rd.path / ".flwr"
        write_flwr_home(home, self.control_address, insecure=False, root_cert=str(self.fed.ca))
        # A persistent SuperLink database (resume) already holds the keys it registered before and
        # answers "already registered" without the node id: keep the map this run dir recorded then.
        names = dict(self.rd.enrolled_sites() or {}) if self.database != ":flwr-in-memory:" else {}
        for site, pub in self.fed.enrolled().items():
            out = subprocess.run([flower_script("flwr"), "supernode", "register", str(pub), "fedsilo",
                                  "--name", site, "--format", "json"], env=flower_env(home),
                                 capture_output=True, text=True)
            try:
                reply = json.loads(out.stdout)
            except json.JSONDecodeError:
                reply = {}
            if "node-id" in reply or "node_id" in reply:
                names = {node: name for node, name in names.items() if name != site}  # re-enrolled key
                names[str(reply.get("node-id", reply.get("node_id")))] = site
            elif "already" not in (out.stdout + out.stderr).lower():
                raise FedSiloError(f"cannot register site {site}'s key with the SuperLink: "
                                   f"{(out.stdout + out.stderr).strip().splitlines()[-1:]}")
        atomic_write_json(self.rd.enrolment_path, names)

    def __exit__(self, *exc) -> None:
        for proc in reversed(self.procs):
            stop(proc)
