"""fl-audit: verify and read a FedSilo audit log (common/audit.py)."""

from __future__ import annotations

import argparse
import json
import sys

from common.cliparse import Parser
from common.audit import LOG_START, VerifyResult, load_public_key, printable, trust, verify_log
from common.errors import FedSiloError, cli_entry

DESCRIPTION = """Check or read a FedSilo audit log: a JSON-lines file in which every record is
signed with its node's NIST P-256 key and names the record before it by hash, so an edited,
deleted, inserted, reordered or torn record is found."""

EPILOG = """exit status: 0 when the log is intact, 2 (with one line on stderr naming the first
bad record, counted from 0) when it is damaged, missing or unreadable.
Records cut off the end of a log leave a shorter intact log: compare the printed head with one
kept elsewhere (e.g. the run summary) to detect that."""

KEY_HELP = """the node's OpenSSH public key file (.pub), obtained independently of the log
(repeatable: any of them may be the log's key). Without --key the log is checked against the
key written in its own first record, which shows it is consistent, not who wrote it."""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="fl-audit", description=DESCRIPTION, epilog=EPILOG)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    verify = sub.add_parser("verify", help="check every record; print OK and the head hash",
                            description="Check every record of LOG: fields, sequence, hash chain, "
                            "signatures. Prints 'OK: N records, head HASH', or the first bad record.",
                            epilog=EPILOG)
    show = sub.add_parser("show", help="print the records, one per line",
                          description="Print LOG's records, one per line: seq, time, node, kind, "
                          "data (shortened). The log is verified too: records from the first bad "
                          "one on are marked '!' and the command then fails.", epilog=EPILOG)
    for cmd in (verify, show):
        cmd.add_argument("log", metavar="LOG", help="the audit log (JSON lines)")
        cmd.add_argument("--key", metavar="PUBFILE", action="append", default=[], help=KEY_HELP)
    show.add_argument("--width", type=int, default=100, metavar="N",
                      help="shorten the data column to N characters [default: 100]")
    return p


def _verify(args) -> VerifyResult:
    trusted = trust(*(load_public_key(path) for path in args.key)) if args.key else None
    return verify_log(args.log, trusted)


def _fail(args, result: VerifyResult) -> FedSiloError:
    return FedSiloError(f"{args.log}: record {result.first_bad}: {result.reason}")


def cmd_verify(args) -> int:
    result = _verify(args)
    if not result.ok:
        raise _fail(args, result)
    print(f"OK: {result.records} records, head {result.head}")
    if not args.key:
        print(f"fl-audit: note: signed by {result.key_id} ({printable(result.node)}), the key the "
              "log names itself; pass --key PUBFILE to check who signed it", file=sys.stderr)
    return 0


def cmd_show(args) -> int:
    result = _verify(args)  # first, so a damaged log is never shown as if it were intact
    with open(args.log, "rb") as fh:
        for index, raw in enumerate(fh):
            mark = "" if result.ok or index < result.first_bad else "! "
            print(mark + _show_line(raw, index, args.width))
    if not result.ok:
        raise _fail(args, result)
    return 0


def _show_line(raw: bytes, index: int, width: int) -> str:
    try:
        rec = json.loads(raw.decode("utf-8"))
        fields = (rec["seq"], rec["time"], rec["node"], rec["kind"], rec["data"])
    except (ValueError, TypeError, KeyError, RecursionError):
        return f"<line {index}: not a record>"
    seq, time, node, kind, data = fields
    if kind == LOG_START and isinstance(data, dict):
        short = f"key {rec.get('key_id')}"  # the public key itself is long and says nothing more
    else:
        short = json.dumps(data, sort_keys=True, ensure_ascii=False)
    # Everything from the log is escaped: a forged record must not drive the terminal.
    return "  ".join(printable(str(v), limit) for v, limit in
                     ((seq, 12), (time, 40), (node, 40), (kind, 40), (short, max(width, 10))))


@cli_entry("fl-audit")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return {"verify": cmd_verify, "show": cmd_show}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
