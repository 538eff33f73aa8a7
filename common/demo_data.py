"""A small synthetic dataset for the demo and the tests: bank customer messages by topic.

Generated, not downloaded: each message is a template filled with words that signal its topic,
plus topic-neutral filler, so a classifier can learn it in a few rounds but not from one word.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from common.cliparse import Parser

TOPICS = {
    "card": (["my card", "the debit card", "my credit card", "the new card", "my contactless card"],
             ["was declined at the shop", "is blocked", "has not arrived yet", "got swallowed by the ATM",
              "shows a wrong PIN", "expired last week"]),
    "transfer": (["my transfer", "the payment to my landlord", "a wire transfer", "the money I sent",
                  "an international transfer"],
                 ["is still pending", "never reached the recipient", "was sent to the wrong account",
                  "was charged a fee twice", "is taking days to arrive"]),
    "loan": (["my mortgage", "the personal loan", "my loan application", "the car loan",
              "the interest rate on my loan"],
             ["was rejected without a reason", "needs an extra document", "seems too high",
              "repayment date should move", "was approved but not paid out"]),
    "account": (["my account", "the savings account", "online banking", "my login",
                 "the app password"],
                ["is locked after three attempts", "shows the wrong address", "needs to be closed",
                 "will not let me sign in", "lost my statements"]),
}
OPENERS = ["Hello,", "Hi team,", "Good morning.", "Dear bank,", "Urgent:", "", "Quick question:"]
CLOSERS = ["Please help.", "Thanks in advance.", "What should I do?", "Can someone call me back?",
           "", "Regards, a customer.", "This is the second time I ask."]


def make_messages(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    labels = sorted(TOPICS)
    for i in range(n):
        label = labels[i % len(labels)]
        subjects, problems = TOPICS[label]
        parts = (rng.choice(OPENERS), rng.choice(subjects), rng.choice(problems) + ".", rng.choice(CLOSERS))
        text = " ".join(part for part in parts if part)
        rows.append((text, label))
    rng.shuffle(rows)
    return rows


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar=None, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def write_demo(out: Path, sites: int = 3, per_site: int = 240, seed: int = 7) -> list[Path]:
    """One TSV per site (site-A.tsv, site-B.tsv, ...) and all.tsv with every row."""
    out.mkdir(parents=True, exist_ok=True)
    rows = make_messages(sites * per_site, seed)
    paths = []
    for s in range(sites):
        paths.append(write_tsv(out / f"site-{chr(65 + s)}.tsv", rows[s * per_site:(s + 1) * per_site]))
    write_tsv(out / "all.tsv", rows)
    return paths


def main(argv=None) -> int:
    p = Parser(prog="fl-demo-data", description="Write a synthetic demo dataset as one file per site: bank "
               "customer messages by topic (TSV), or with --task ner clinical sentences tagged with "
               "diseases and drugs (CoNLL).")
    p.add_argument("--out", default="demo-data", help="output folder [default: demo-data]")
    p.add_argument("--sites", type=int, default=3, help="number of site files [default: 3]")
    p.add_argument("--per-site", type=int, default=240, help="messages per site [default: 240]")
    p.add_argument("--seed", type=int, default=7, help="generator seed [default: 7]")
    p.add_argument("--task", choices=("classify", "ner"), default="classify",
                   help="classify: messages by topic; ner: tagged sentences [default: classify]")
    args = p.parse_args(argv)
    if args.task == "ner":
        from common.demo_ner import write_demo_conll as write
    else:
        write = write_demo
    for path in write(Path(args.out), args.sites, args.per_site, args.seed):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
