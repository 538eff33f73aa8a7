"""fl-client: run a site. Starts Flower's SuperNode next to the site's data.

The data file is checked here first, so a broken file fails on the operator's terminal and
not inside a training round. The SuperNode then connects out to the coordinator; the
FedSilo ClientApp it runs reads the file locally and sends back only model deltas and
aggregate evaluation counts.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path

from client.ledger import PrivacyLedger, default_ledger_path, fingerprint
from common.data import read_records
from common.errors import FedSiloError, cli_entry
from common.privacy import SitePrivacy, add_privacy_options, privacy_from_args
from common.launch import (
    flower_env,
    flower_script,
    free_port,
    require_loopback,
    split_address,
    stop,
)

DESCRIPTION = """Join a FedSilo federation as site NAME with the labelled records in --data
(.csv, .tsv or .jsonl with a text and a label column). Raw text never leaves this machine:
the site trains locally and sends model updates and evaluation counts only."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fl-client", description=DESCRIPTION)
    p.add_argument("--site", required=True, metavar="NAME", help="this site's name, as shown in reports")
    p.add_argument("--data", required=True, metavar="FILE", help="the site's labelled data file")
    p.add_argument("--server", default="127.0.0.1:9092", metavar="HOST:PORT",
                   help="the coordinator's SuperLink address [default: 127.0.0.1:9092]")
    p.add_argument("--insecure", action="store_true",
                   help="plaintext connection without TLS; only allowed to a loopback address")
    p.add_argument("--text-column", default="text", help="name of the text column [default: text]")
    p.add_argument("--label-column", default="label", help="name of the label column [default: label]")
    p.add_argument("--port", type=int, default=0,
                   help="local port of the SuperNode's runtime API; 0 picks a free one [default: 0]")
    p.add_argument("--max-wait", type=float, default=300.0, metavar="SECONDS",
                   help="give up if the server cannot be reached for this long [default: 300]")
    p.add_argument("--ledger", metavar="FILE", default=None,
                   help="this dataset's privacy ledger [default: DATA.privacy-ledger.json next to the data]")
    add_privacy_options(p)
    return p


@cli_entry("fl-client")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.site.strip() or any(c in args.site for c in "\"'\\= \t\n"):
        raise FedSiloError(f"--site {args.site!r}: use letters, digits, '-' or '_'")
    host, _port = split_address(args.server)
    if not args.insecure:
        raise FedSiloError("TLS is not set up yet: pass --insecure to connect plaintext to 127.0.0.1")
    require_loopback(host, "--insecure")
    data = Path(args.data).expanduser().resolve()
    records = read_records(data, args.text_column, args.label_column)
    privacy = privacy_from_args(args)
    ledger = Path(args.ledger).expanduser().resolve() if args.ledger else default_ledger_path(data)
    print(f"fl-client: site {args.site}: {len(records)} records in {data}", flush=True)
    print(f"fl-client: {privacy_status(privacy, ledger, records)}", flush=True)

    node_config = " ".join(f"{key}={json.dumps(value)}" for key, value in {
        "site": args.site, "data-path": str(data), "ledger": str(ledger),
        "text-column": args.text_column, "label-column": args.label_column,
        **privacy.to_node_config()}.items())
    port = args.port or free_port()
    supernode = subprocess.Popen(
        [flower_script("flower-supernode"), "--insecure", "--superlink", args.server,
         "--node-config", node_config, "--port", str(port), "--max-wait-time", str(args.max_wait)],
        env=flower_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        text=True, errors="replace", start_new_session=True)
    # Stop the SuperNode (and the ClientApp it runs) however this process is asked to end.
    signal.signal(signal.SIGTERM, _interrupt)
    gave_up = False
    try:
        for line in supernode.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            # Flower's SuperNode logs that it gives up but keeps running: end it ourselves.
            if "Giving up reconnection" in line:
                gave_up = True
                break
    finally:
        stop(supernode)
    if gave_up:
        raise FedSiloError(f"cannot reach the server at {args.server} (gave up after {args.max_wait:.0f}s)")
    if supernode.returncode not in (0, -signal.SIGTERM):
        raise FedSiloError(f"the SuperNode stopped with exit code {supernode.returncode}")
    return 0


def privacy_status(privacy: SitePrivacy, ledger_path: Path, records) -> str:
    """Check the site's DP settings and its ledger before joining, and say where they stand."""
    if not privacy.dp:
        return "differential privacy is OFF for this site (--no-dp); every report will say so"
    delta = privacy.delta_for(len(records))
    ledger = PrivacyLedger(ledger_path, fingerprint(records), len(records), delta, privacy.accountant)
    spent = ledger.spent()
    if spent >= privacy.privacy_budget:
        raise FedSiloError(f"privacy budget exhausted: {spent:.2f} of {privacy.privacy_budget:.2f} "
                           f"spent on this dataset (ledger {ledger_path})")
    return (f"DP-SGD on: epsilon {spent:.2f} of budget {privacy.privacy_budget:.2f} spent so far "
            f"(delta {delta:.2g}, {privacy.accountant.upper()} accountant, ledger {ledger_path})")


def _interrupt(signum, frame):
    raise KeyboardInterrupt
