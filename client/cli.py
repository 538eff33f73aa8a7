"""fl-client: run a site. Starts Flower's SuperNode next to the site's data.

The data file, the privacy ledger and the site kit are checked here first, so a broken
file fails on the operator's terminal and not inside a training round. The SuperNode then
connects out to the coordinator over TLS, authenticated with the site's enrolled key, and runs
only the FedSilo app installed here (client/app_guard.py). The ClientApp reads the file
locally and sends back only model deltas and aggregate evaluation counts.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
from dataclasses import replace
from pathlib import Path

from client import worker
from client.app_guard import APPROVED_ENV, approved_app_hash, write_shim
from client.kit import load_kit
from client.ledger import PrivacyLedger, default_ledger_path, fingerprint, hold_ledger
from client.redaction_count import count_in_child
from client.site import DEFAULT_SITE_EVAL_FRACTION
from client.site_limits import ALLOW_MODEL, CAPS
from client.supernode_process import SessionMark, run_supernode, stop_running_supernode
from client.supernode import DEFAULT_PULL_INTERVAL, PULL_ENV, SECRET_ENV
from common import device as devices
from common.audit import AuditLog, generate_key
from common.cliparse import Parser, port_or_zero_arg, positive_int
from common.data import read_records
from common.ner_data import read_sentence_records
from common.errors import FedSiloError, cli_entry
from common.fairness import add_fairness_options, fairness_from_args
from common.pki import make_node_key
from common.launch import (
    flower_env,
    free_port,
    require_loopback,
    split_address,
    stop,
)
from common.privacy import SitePrivacy, add_privacy_options, privacy_from_args
from common.redaction import load_redaction_config, report_lines

DESCRIPTION = """Join a FedSilo federation with the labelled records in --data (.csv, .tsv or
.jsonl with a text and a label column). With --kit (from the coordinator's `fl-server enroll`)
the site connects over TLS with its enrolled key; --insecure is plaintext to 127.0.0.1 only.
Raw text never leaves this machine: the site trains locally and sends model updates and
evaluation counts only."""



def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="fl-client", description=DESCRIPTION)
    p.add_argument("--make-key", metavar="FILE",
                   help="make this site's key pair (FILE and FILE.pub) and stop: send FILE.pub to the coordinator "
                        "(fl-server enroll --public-key), keep FILE, and start with --kit KIT --key FILE")
    p.add_argument("--kit", metavar="DIR", help="site kit from the coordinator (CA, server address, enrolled key)")
    p.add_argument("--key", metavar="FILE", help="this site's private key, made with --make-key [default: the "
                                                 "kit's site.key, where the coordinator made one]")
    p.add_argument("--site", metavar="NAME", help="this site's name (taken from the kit when given)")
    p.add_argument("--data", metavar="FILE", help="the site's labelled data file (required to join)")
    p.add_argument("--server", metavar="HOST:PORT",
                   help="the coordinator's address [default: the kit's, or 127.0.0.1:9092 with --insecure]")
    p.add_argument("--insecure", action="store_true",
                   help="plaintext connection without TLS or site key; only allowed to a loopback address")
    p.add_argument("--task", choices=("classify", "ner"), default="classify",
                   help="what --data holds: 'classify', a labelled text file (TSV, CSV, JSONL); 'ner', a CoNLL "
                        "file (token<TAB>tag per line, IOB2 or IOB1 tags, a blank line between sentences). The "
                        "site refuses runs of the other task [default: classify]")
    p.add_argument("--text-column", default="text", help="name of the text column [default: text]")
    p.add_argument("--label-column", default="label", help="name of the label column [default: label]")
    p.add_argument("--port", type=port_or_zero_arg, default=0,
                   help="local port of the SuperNode's runtime API; 0 picks a free one [default: 0]")
    p.add_argument("--max-wait", type=float, default=300.0, metavar="SECONDS",
                   help="give up if the server cannot be reached for this long; Flower retries with "
                        "exponential backoff and jitter (waits of up to 20 s), printing one line per "
                        "retry [default: 300]")
    p.add_argument("--max-retries", type=int, default=0, metavar="N",
                   help="also give up after N failed connection attempts; 0 = no limit but --max-wait "
                        "[default: 0]")
    p.add_argument("--ledger", metavar="FILE", default=None,
                   help="this dataset's privacy ledger [default: DATA.privacy-ledger.json next to the data]")
    p.add_argument("--audit-log", metavar="FILE", default=None,
                   help="this site's signed audit log [default: DATA.audit.jsonl next to the data]")
    p.add_argument("--redaction-config", metavar="FILE", default=None,
                   help='JSON file choosing what to redact: {"entities": ["EMAIL", ...]} or {"enabled": false}')
    p.add_argument("--site-worker", action=argparse.BooleanOptionalAction, default=True,
                   help="keep torch, the model and the tokenised data in one long-lived worker process and "
                        "run each message's task in a fork of it (the default); --no-site-worker runs "
                        "Flower's new process per message instead, which imports torch and loads the model "
                        "and data again for each of a round's messages [default: on]")
    p.add_argument("--device", default="auto", metavar="DEVICE", help=devices.DEVICE_HELP)
    p.add_argument("--threads", type=positive_int, metavar="N", default=None,
                   help="CPU threads this site's training uses [default: torch's choice, one per core]; "
                        "lower it when several sites share one machine")
    p.add_argument("--pull-interval", type=float, default=DEFAULT_PULL_INTERVAL, metavar="SECONDS",
                   help="how long the SuperNode waits before asking the server again after finding no "
                        "message; each of a round's five messages waits for it (Flower: 3 s) "
                        f"[default: {DEFAULT_PULL_INTERVAL}]")
    add_privacy_options(p)
    add_fairness_options(p)
    own = p.add_argument_group("what this site sends (the site's own limits; the server cannot raise them)")
    own.add_argument("--allow-unmasked-updates", action="store_true",
                     help="also train in rounds without secure aggregation, where the server sees this "
                          "site's own update (DP-protected if DP is on, but not hidden in a sum); off: the "
                          "site refuses such rounds and the server names it in the round line")
    own.add_argument("--eval-fraction", type=float, default=DEFAULT_SITE_EVAL_FRACTION, metavar="F",
                     help="most of this site's records held out for evaluation; the server may ask for "
                          "less, never more. Evaluation records are not DP-protected: the server receives "
                          "their confusion counts each round [default: %(default)s]")
    caps = p.add_argument_group(
        "what a run may ask of this site (the server picks the run's settings; a run asking for more is "
        "refused with one line naming the option, before anything is loaded, trained or charged; a site also "
        "trains at most the run's planned rounds per run, whatever fits the server sends. fl-sim's virtual sites "
        "have none of these caps: there the coordinator plays every site)")
    caps.add_argument("--allow-model", action="append", default=[], metavar="NAME_OR_PATH",
                      help="a base model a run may use (repeatable): a local model folder or a Hugging Face "
                           "name, compared as written, the server's path never looked at; any other is refused "
                           "[default: only the embedded all-MiniLM-L6-v2, the run option model left empty]")
    for cap in CAPS:
        caps.add_argument(f"--{cap.key}", type=positive_int, default=cap.default, metavar="N",
                          help=f"{cap.help} [default: %(default)s]")
    return p


def allowed_models(entries: list[str]) -> list[str]:
    """--allow-model entries as written (with ~ expanded), and the absolute path of each that is a
    local folder: the run's `model` must name one of them exactly."""
    allowed = []
    for entry in entries:
        if not entry.strip() or "\n" in entry:
            raise FedSiloError(f"--allow-model {entry!r}: give a model folder or a Hugging Face name")
        expanded = os.path.expanduser(entry)
        allowed += [entry, expanded] + ([str(Path(expanded).resolve())] if Path(expanded).exists() else [])
    return list(dict.fromkeys(allowed))


def connection(args) -> tuple[str, str, list[str]]:
    """(site name, server address, SuperNode TLS/auth arguments) from the kit or --insecure."""
    if args.kit and args.insecure:
        raise FedSiloError("--kit and --insecure exclude each other")
    if args.kit:
        kit = load_kit(args.kit, args.key)
        if args.site and args.site != kit["site"]:
            raise FedSiloError(f"--site {args.site} does not match the kit's site {kit['site']}")
        server = args.server or kit["server"]
        split_address(server)
        return kit["site"], server, ["--root-certificates", str(kit["ca"]),
                                     "--auth-supernode-private-key", str(kit["key"])]
    if not args.insecure:
        raise FedSiloError("give --kit DIR (TLS, enrolled site) or --insecure (plaintext, 127.0.0.1 only)")
    if not args.site:
        raise FedSiloError("--site NAME is required with --insecure")
    if not args.site.strip() or any(c in args.site for c in "\"'\\= \t\n"):
        raise FedSiloError(f"--site {args.site!r}: use letters, digits, '-' or '_'")
    server = args.server or "127.0.0.1:9092"
    host, _ = split_address(server)
    require_loopback(host, "--insecure")
    return args.site, server, ["--insecure"]


@cli_entry("fl-client")
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.make_key:
        pub = make_node_key(Path(args.make_key).expanduser().resolve())
        print(f"fl-client: wrote {args.make_key} (keep it secret, at this site) and {pub}; send {pub} to the "
              f"coordinator (fl-server enroll --public-key), then start with --kit KIT --key {args.make_key}")
        return 0
    if not args.data:
        parser.error("the following arguments are required: --data")
    if args.key and not args.kit:
        raise FedSiloError("--key is the key enrolled in a kit: give --kit too")
    if not 0.1 <= args.pull_interval <= 60:  # also refuses nan and inf
        raise FedSiloError(f"--pull-interval {args.pull_interval}: give a number of seconds from 0.1 to 60")
    if not 1 <= args.max_wait <= 7 * 86400:  # also refuses nan and inf: the wait must end
        raise FedSiloError(f"--max-wait {args.max_wait}: give a number of seconds from 1 to 604800")
    if not 0.0 <= args.eval_fraction <= 0.9:  # also refuses nan
        raise FedSiloError(f"--eval-fraction {args.eval_fraction}: give a share from 0 to 0.9")
    if args.max_retries < 0:
        raise FedSiloError(f"--max-retries {args.max_retries}: give 0 (no limit) or a positive number")
    device = devices.resolve(args.device)  # before any file is written: CUDA where there is none stops here
    site, server, tls_args = connection(args)
    allowed = allowed_models(args.allow_model)
    data = Path(args.data).expanduser().resolve()
    fairness = fairness_from_args(args)
    if args.task == "ner":
        records = read_sentence_records(data, fairness.group_column)
    else:
        records = read_records(data, args.text_column, args.label_column, fairness.group_column)
    privacy = privacy_from_args(args)
    if args.redaction_config:
        entities = load_redaction_config(args.redaction_config)
        privacy = replace(privacy, redact=bool(entities), redact_entities=",".join(entities))
    # Before the ledger and the audit log are written: an unknown PII type must leave no files.
    redactions = count_in_child(records, privacy, args.task)  # the operator's local report: counts, never values
    ledger = Path(args.ledger).expanduser().resolve() if args.ledger else default_ledger_path(data)
    unit = "sentences (CoNLL, task ner)" if args.task == "ner" else "records"
    print(f"fl-client: site {site}: {len(records)} {unit} in {data}; computes on {devices.describe(device)}",
          flush=True)
    audit_log = Path(args.audit_log).expanduser().resolve() if args.audit_log else data.with_name(data.name + ".audit.jsonl")
    # Its own key, never the node key the kit holds: a coordinator that made the site's node key
    # (--generate-site-key) must not be able to sign the site's audit trail.
    audit_key = data.with_name(data.name + ".audit-key")
    print(f"fl-client: {privacy_status(privacy, ledger, records, audit_key, audit_log)}", flush=True)
    if not audit_key.exists():
        generate_key(audit_key)
    AuditLog(audit_log, audit_key, f"site {site}")  # fail now on a log kept with another key or name
    print(f"fl-client: audit log {audit_log} (signed with {audit_key})", flush=True)
    print(f"fl-client: fairness: {fairness.describe(records.groups)}", flush=True)
    print("fl-client: updates leave this site " + ("masked by SecAgg+, or in the clear in rounds the server runs "
          "without it (--allow-unmasked-updates)" if args.allow_unmasked_updates else
          "masked by SecAgg+ only (rounds without it are refused)"), flush=True)
    for line in report_lines(redactions, len(records)) if privacy.redact else ["redaction is OFF (--no-redact)"]:
        print(f"fl-client: redaction: {line}", flush=True)
    limits = {cap.key: getattr(args, cap.key.replace("-", "_")) for cap in CAPS}
    print("fl-client: runs may ask for at most " + ", ".join(f"{cap.run_key} {limits[cap.key]}" for cap in CAPS)
          + "; models: the embedded one" + "".join(f", {m}" for m in args.allow_model), flush=True)

    # One fl-client per ledger, for as long as it runs: a second would charge it concurrently.
    with hold_ledger(ledger):
        node_config = " ".join(f"{key}={json.dumps(value)}" for key, value in {
            "site": site, "data-path": str(data), "ledger": str(ledger), "task": args.task,
            "text-column": args.text_column, "label-column": args.label_column,
            "audit-log": str(audit_log), "audit-key": str(audit_key),
            "allow-unmasked-updates": bool(args.allow_unmasked_updates), "eval-fraction": float(args.eval_fraction),
            "device": str(device),
            ALLOW_MODEL: "\n".join(allowed), **limits,
            **privacy.to_node_config(), **fairness.to_node_config()}.items())
        with tempfile.TemporaryDirectory(prefix="fedsilo-site-") as tmp:
            # The SuperNode installs each run's app bundle under FLWR_HOME: a fresh private folder
            # per fl-client, never ~/.flwr/apps, whose cached folders it would run unchecked.
            env = flower_env(Path(tmp) / "flwr")
            env["PATH"] = str(write_shim(Path(tmp) / "bin").parent) + os.pathsep + env["PATH"]
            env[APPROVED_ENV] = approved_app_hash()
            # How often the SuperNode's task launcher looks for a new message to start (Flower: 1 s);
            # a SecAgg+ round has five of them.
            env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")
            env[PULL_ENV] = str(args.pull_interval)  # read by client/supernode.py
            # The Runtime API's credential (client/supernode.py): only this site's own processes get it.
            secret = Path(tmp) / "superexec.secret"
            secret.write_bytes(secrets.token_bytes(32))
            secret.chmod(0o600)
            env[SECRET_ENV] = str(secret)
            if args.threads:  # read by torch when it is imported, in the worker or a task process
                env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
            retries = ["--max-retries", str(args.max_retries)] if args.max_retries else []
            session = SessionMark(Path(args.kit)) if args.kit else None  # plaintext nodes get a new key each start
            env.pop(worker.ADDRESS_ENV, None)  # never an outer fl-client's worker
            site_worker = None
            if args.site_worker:
                site_worker, worker_vars = worker.start(Path(tmp), env)
                env.update(worker_vars)
            watch = worker.Watch(site_worker, on_death=stop_running_supernode)
            print(f"fl-client: connecting to {server} ({'plaintext' if args.insecure else 'TLS, site key'}); "
                  f"runs only the FedSilo app {env[APPROVED_ENV][:16]}...", flush=True)
            try:
                code = run_supernode(tls_args + ["--superlink", server, "--node-config", node_config,
                                                 "--port", str(args.port or free_port()),
                                                 "--max-wait-time", str(args.max_wait), *retries], env, server,
                                     args.max_wait, session)
            except (KeyboardInterrupt, FedSiloError):
                if watch.died is None:
                    raise
            finally:
                watch.closing = True
                stop(site_worker)
            if watch.died is not None:  # the watch stopped the SuperNode: the site leaves, saying why
                raise FedSiloError(f"the site's training worker stopped (exit code {watch.died}); "
                                   "this site left the federation: restart fl-client")
            return code


def privacy_status(privacy: SitePrivacy, ledger_path: Path, records, audit_key: Path, audit_log: Path) -> str:
    """Check the site's DP settings and its ledger (signature, chain, anchor in the audit log)
    before joining, and say where they stand."""
    if not privacy.dp:
        return "differential privacy is OFF for this site (--no-dp); every report will say so"
    ledger = PrivacyLedger(ledger_path, fingerprint(records), len(records),
                           privacy.delta_for(len(records)) if privacy.delta else None, privacy.accountant,
                           signing_key=audit_key if audit_key.exists() else None, audit_log=audit_log,
                           records=records)
    delta = ledger.delta
    spent = ledger.spent()
    if spent >= privacy.privacy_budget:
        raise FedSiloError(f"privacy budget exhausted: {spent:.2f} of {privacy.privacy_budget:.2f} "
                           f"spent on this dataset (ledger {ledger_path})")
    notes = "".join(f"; {note}" for note in ledger.notes)
    return (f"DP-SGD on: epsilon {spent:.2f} of budget {privacy.privacy_budget:.2f} spent so far "
            f"(delta {delta:.2g}, {privacy.accountant.upper()} accountant, ledger {ledger_path}){notes}")
