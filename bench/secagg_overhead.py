"""Round wall time with and without SecAgg+, and bytes each site sends per round.

Runs fl-sim (Flower's simulation engine) with a tiny BERT for one round at each federation
size, with and without secure aggregation, side by side in one run. Round time is the
ServerApp's own measure of the round (metrics.jsonl "seconds": sampling, training at every
site, aggregation, evaluation). Bytes per site are what the site's train reply carries as
model update: float32 deltas without SecAgg+, the masked quantised vector with it (its dtype
and size read from Flower's own quantisation of a vector of that size).

    python bench/secagg_overhead.py [--sites 3,10] [--out bench/results/secagg_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent


def tiny_model(out: Path) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from common.model import quiet_transformers, resolve_model

    quiet_transformers()
    tok = AutoTokenizer.from_pretrained(resolve_model(""))
    BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def masked_bytes(weights: list[np.ndarray]) -> int:
    """Size of the masked vector a site sends under SecAgg+ (Flower's quantise + mask, mod 2**32)."""
    from flwr.common.secure_aggregation.quantization import quantize

    quantized = quantize([w.astype(np.float32) for w in weights], 1.0, 2**22)
    return int(sum(np.asarray(q).nbytes for q in quantized)) + 8  # + the packed weight factor


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sites", default="3,10")
    p.add_argument("--out", default="bench/results/secagg_overhead.json")
    args = p.parse_args()
    from common.demo_data import write_demo

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tiny_model(tmp / "tiny")
        for sites in map(int, args.sites.split(",")):
            data = tmp / f"data-{sites}"
            write_demo(data, sites=sites, per_site=100, seed=3)
            for secure in (False, True):
                run_dir = tmp / f"run-{sites}-{secure}"
                cmd = [str(BIN / "fl-sim"), "--sites", str(sites), "--data", str(data / "all.tsv"), "--model",
                       str(model), "--rounds", "1", "--no-dp", "--batch-size", "16", "--run-dir", str(run_dir),
                       "--secure-aggregation" if secure else "--no-secure-aggregation"]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
                    return 1
                record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
                weights = list(np.load(run_dir / "rounds" / "round-0001.npz").values())
                plain = int(sum(w.astype(np.float32).nbytes for w in weights))
                row = {"sites": sites, "secure_aggregation": secure, "round_seconds": record["seconds"],
                       "update_bytes_per_site": masked_bytes(weights) if secure else plain}
                print(json.dumps(row), flush=True)
                rows.append(row)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    by = {(r["sites"], r["secure_aggregation"]): r for r in rows}
    overhead = {str(s): round(by[(s, True)]["round_seconds"] / by[(s, False)]["round_seconds"] - 1, 3)
                for s in map(int, args.sites.split(","))}
    result = {"benchmark": "secagg_overhead", "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "commit": commit, "model": "tiny BERT (2 layers, hidden 32), LoRA, fl-sim", "rows": rows,
              "round_time_overhead": overhead}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = ["| sites | plain round (s) | SecAgg+ round (s) | overhead | bytes/site plain | bytes/site SecAgg+ |",
          "|---|---|---|---|---|---|"]
    for s in map(int, args.sites.split(",")):
        a, b = by[(s, False)], by[(s, True)]
        md.append(f"| {s} | {a['round_seconds']} | {b['round_seconds']} | {overhead[str(s)]:+.0%} | "
                  f"{a['update_bytes_per_site']:,} | {b['update_bytes_per_site']:,} |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
