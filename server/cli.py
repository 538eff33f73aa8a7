"""fl-server: provision a federation and coordinate its runs.

    fl-server init   --dir FED --host NAME_OR_IP [--port 9092]   CA, server certificate, keys
    fl-server enroll --dir FED --site A --public-key A.pub       a site's kit, for the key it made
    fl-server renew  --dir FED [--days 365]                        a new server certificate, same CA
    fl-server [run]  --federation FED --labels ...                 TLS, enrolled sites, SecAgg+
    fl-server [run]  --insecure --labels ...                       plaintext on 127.0.0.1 only
    fl-server resume RUN_DIR                                       continue a killed run
    fl-server status RUN_DIR                                       where a run stands, live or finished
    fl-server report RUN_DIR                                       (re)write RUN_DIR/report.html

Every run writes a checkpoint after each round. Started again with the same options and
--run-dir (or with `fl-server resume RUN_DIR`), a killed run goes on after its last finished
round; the sites keep running and reconnect by themselves. `resume` takes the options from
RUN_DIR/command.json, signed with this coordinator's key (~/.config/fedsilo/coordinator.key), and
refuses a run directory it did not write.

A run starts Flower's SuperLink on 127.0.0.1 only (its Control API must never face sites),
registers every enrolled site's key with it, opens the gateway (server/gateway.py) on the
public address for the Fleet API alone, submits the FedSilo app with `flwr run`, and shows the
round lines and the final report. Everything is written to --run-dir, readable by this user alone.
Flower installs the app into a FLWR_HOME made for the run and removed after it: the app that runs
is the one this installation built, never one found on disk.
"""

from __future__ import annotations

import argparse
import json
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
    private_flwr_home,
    require_loopback,
    require_port_free,
    spawn,
    split_address,
    stop,
    wait_for_port,
    write_flwr_home,
)
from common.pki import VALID_DAYS
from server.federation import Federation
from server.run_dir import RunDir, read_run_options, write_run_options
from server.submit import absolute_local_paths, finish, submit_and_stream
from server.tracking import RunFollower, add_tracking_options

COMMANDS = ("init", "enroll", "renew", "run", "resume", "status", "report")

# fl-server takes every run option except the simulation-only ones.
_RUN_KEYS = ("run-dir", "model", "task", "labels", "rounds", "min-sites", "local-epochs", "batch-size",
             "learning-rate", "head-learning-rate", "head-init", "head-epsilon-share", "max-length", "trainable",
             "lora-r", "lora-targets", "eval-fraction",
             "seed", "text-column", "label-column", "secure-aggregation", "secagg-threshold", "secagg-neighbours",
             "round-timeout", "aggregation", "trim-fraction", "byzantine-sites", "server-optimizer",
             "server-learning-rate", "server-tau", "server-momentum", "max-update-norm", "max-fairness-gap")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="fl-server", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", metavar="{init,enroll,renew,run,resume,status,report}")

    init = sub.add_parser("init", help="create a federation folder: CA, server certificate, server key")
    init.add_argument("--dir", required=True, help="federation folder to create")
    init.add_argument("--host", action="append", required=True,
                      help="host name or IP address sites use to reach the server (repeatable; the first "
                           "goes into site kits)")
    init.add_argument("--port", type=port_arg, default=9092, help="port sites connect to [default: 9092]")

    enroll = sub.add_parser("enroll", help="enroll a site: its key pair and a kit to hand over")
    enroll.add_argument("--dir", required=True, help="the federation folder")
    enroll.add_argument("--site", required=True, help="the site's name")
    enroll.add_argument("--public-key", help="the site's own OpenSSH public key (made at the site with "
                                             "`fl-client --make-key FILE`: the site keeps its private key)")
    enroll.add_argument("--generate-site-key", action="store_true",
                        help="make the site's key pair here and put the private key in the kit (for trying "
                             "FedSilo on one machine: this coordinator then holds the site's private key)")
    enroll.add_argument("--replace", action="store_true",
                        help="re-enrol a site already enrolled: a new key and kit (its old kit stops working)")

    renew = sub.add_parser("renew", help="issue a new server certificate under the same CA (site kits stay valid)")
    renew.add_argument("--dir", required=True, help="the federation folder")
    renew.add_argument("--days", type=int, default=VALID_DAYS,
                       help=f"days the new certificate is valid (at most until the CA expires) [default: {VALID_DAYS}]")

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
    add_tracking_options(run)

    resume = sub.add_parser("resume", help="continue a killed run from its run directory, with the "
                                           "options it was started with")
    resume.add_argument("run_dir", metavar="RUN_DIR", help="the run directory of the killed run")

    status = sub.add_parser("status", help="where a run stands: round, sites connected and trained, epsilon "
                                           "per site, last failure (live or finished; reads RUN_DIR only)")
    status.add_argument("run_dir", metavar="RUN_DIR", help="the run directory")
    status.add_argument("--json", action="store_true", help="the same as one JSON object")
    report = sub.add_parser("report", help="write RUN_DIR/report.html (plots of the rounds; a run writes it "
                                           "after every round by itself)")
    report.add_argument("run_dir", metavar="RUN_DIR", help="the run directory")
    report.add_argument("--compare", metavar="OTHER_RUN_DIR",
                        help="a finished run of the same sites (e.g. without DP): each group's accuracy in both, "
                             "side by side, added to report.html and the model card (sites need --group-column)")
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
              f"enroll sites with: fl-server enroll --dir {fed.path} --site NAME --public-key NAME.pub")
        print(f"fl-server: the server certificate expires on {_day(fed.server_cert)} (renew it before: "
              f"fl-server renew --dir {fed.path}); the CA on {_day(fed.ca)}")
        return 0
    if args.command == "enroll":
        kit = Federation(args.dir).enroll(args.site, Path(args.public_key) if args.public_key else None,
                                          replace=args.replace, generate=args.generate_site_key)
        key = " --key ITS_KEY" if args.public_key else ""
        print(f"fl-server: site {args.site} enrolled; hand {kit} to the site "
              f"(it starts with: fl-client --kit {kit}{key} --data FILE)")
        return 0
    if args.command == "renew":
        if not 1 <= args.days <= 3650:
            raise FedSiloError(f"--days {args.days}: use 1 to 3650")
        fed = Federation(args.dir)
        until = fed.renew(args.days)
        print(f"fl-server: new server certificate {fed.server_cert}, valid until {until:%Y-%m-%d} "
              f"(same CA: the sites' kits stay valid; restart a running fl-server to use it)")
        return 0
    if args.command == "resume":
        return run(resume_args(Path(args.run_dir)))
    if args.command == "status":
        from server.run_status import RunView, status_json, status_lines

        view = RunView(args.run_dir)
        print(json.dumps(status_json(view), indent=2, sort_keys=True) if args.json else "\n".join(status_lines(view)))
        return 0
    if args.command == "report":
        from server.html_report import write_report
        from server.run_status import RunView

        compared = None
        if args.compare:
            from server.fairness_compare import comparison, rewrite_card

            compared = comparison(Path(args.run_dir).expanduser().resolve(), Path(args.compare).expanduser().resolve())
            heading, table, notes = compared
            rewrite_card(Path(args.run_dir).expanduser().resolve(), [(heading, table), (heading + ": gaps", notes)])
            print(f"fl-server: model card written again with '{heading}'")
        print(f"fl-server: wrote {write_report(RunView(args.run_dir), compared)}")
        return 0
    return run(args)


def _day(cert: Path) -> str:
    from common.pki import expires

    return f"{expires(cert):%Y-%m-%d}"


def resume_args(run_dir: Path) -> argparse.Namespace:
    """The options a run in `run_dir` was started with: RUN_DIR/command.json, signed by this
    coordinator. No argv and no working directory are taken from the run directory."""
    run_dir = run_dir.expanduser().resolve()
    options = read_run_options(run_dir)
    args = build_parser().parse_args(["run"])
    unknown = sorted(set(options) - (set(vars(args)) - {"command"}))
    if unknown:
        raise FedSiloError(f"{run_dir}/command.json: unknown option(s) {', '.join(unknown)}")
    if not (run_dir / "state.json").exists():
        raise FedSiloError(f"{run_dir}: the run finished no round yet; start it again with its options")
    for key, value in options.items():
        setattr(args, key, value)
    args.run_dir = str(run_dir)
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
        for line in fed.expiry_warnings():
            print(f"fl-server: warning: {line}", file=sys.stderr, flush=True)
        if not fed.enrolled():
            raise FedSiloError(f"no site is enrolled in {fed.path} (fl-server enroll --dir {fed.path} --site NAME)")
    absolute_local_paths(args)
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
    follower = RunFollower(run_dir, args.tensorboard, args.mlflow)  # a wrong tracking URI stops here
    rd = RunDir(run_dir)
    rd.make_private()
    rd.require_written_here()
    resumed = rd.resume_point(cfg) if rd.state_path.exists() else None
    if fed:
        fed.make_private()
    # What `fl-server resume` restarts with: the options, never argv or a working directory.
    write_run_options(rd.path, {k: v for k, v in vars(args).items() if k != "command"}
                      | {"run_dir": str(rd.path), "federation": str(fed.path) if fed else None})
    if resumed:
        print(f"fl-server: resuming the run in {rd.path} after round {resumed['last_round']} of {cfg.rounds}",
              flush=True)
    with private_flwr_home(rd.path) as home, Coordinator(rd, fed, host, port, home, args.superlink_state) as coordinator:
        print(f"fl-server: sites connect to {host}:{port} ({'TLS' if fed else 'plaintext'}); run directory {rd.path}",
              flush=True)
        hint = "fl-client --kit KIT --data FILE" if fed else f"fl-client --site NAME --data FILE --server {host}:{port} --insecure"
        print(f"fl-server: waiting for {cfg.min_sites} site(s): {hint}", flush=True)
        summary = submit_and_stream(cfg, rd.path, home, coordinator.control_address, insecure=fed is None,
                                    root_cert=str(fed.ca) if fed else None, verbose=args.verbose,
                                    follower=follower)
    return finish(summary, rd.path)


class Coordinator:
    """SuperLink on loopback (+ the gateway and the enrolled keys, with TLS); stopped on exit."""

    def __init__(self, rd: RunDir, fed: Federation | None, host: str, port: int, home: Path,
                 state: str = "sqlite"):
        self.rd, self.fed, self.host, self.port, self.home = rd, fed, host, port, home
        self.database = str(rd.path / "superlink.db") if state == "sqlite" else ":flwr-in-memory:"
        self.procs: list[subprocess.Popen] = []
        self.control_address = ""

    def __enter__(self) -> "Coordinator":
        logs = self.rd.path / "logs"
        logs.mkdir(mode=0o700, exist_ok=True)
        env = coordinator_env(flower_env(self.home))
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
                gateway = spawn([sys.executable, "-P", "-m", "server.gateway", "--listen", f"{self.host}:{self.port}",
                                 "--upstream", f"127.0.0.1:{inner}", "--cert", str(fed.server_cert),
                                 "--key", str(fed.server_key), "--ca", str(fed.ca)], env, logs / "gateway.log",
                                cwd=self.home)
                self.procs.append(gateway)
                wait_for_port(self.host, self.port, gateway, 30, "the gateway", logs / "gateway.log")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _superlink(self, tls: list[str], host: str, port: int, env: dict, logs: Path) -> None:
        proc = spawn([flower_script("flower-superlink"), *tls, "--host", host, "--port", str(port),
                      "--database", self.database,
                      "--disable-runtime-dependency-installation"], env, logs / "superlink.log", cwd=self.home)
        self.procs.append(proc)
        wait_for_port(host, port, proc, 60, "the SuperLink", logs / "superlink.log")
        self.control_address = f"{host}:{port}"

    def _register_sites(self) -> None:
        """Register every enrolled key over the loopback Control API; remember node id -> site."""
        home = self.home
        write_flwr_home(home, self.control_address, insecure=False, root_cert=str(self.fed.ca))
        # A persistent SuperLink database (resume) already holds the keys it registered before and
        # answers "already registered" without the node id: keep the map this run dir recorded then.
        names = dict(self.rd.enrolled_sites() or {}) if self.database != ":flwr-in-memory:" else {}
        for site, pub in self.fed.enrolled().items():
            out = subprocess.run([flower_script("flwr"), "supernode", "register", str(pub), "fedsilo",
                                  "--name", site, "--format", "json"], env=flower_env(home),
                                 capture_output=True, text=True, cwd=home, stdin=subprocess.DEVNULL)
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
