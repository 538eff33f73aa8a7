"""Local training speed and memory on the embedded MiniLM: non-private vs DP, LoRA vs full.

Each configuration runs in its own process (so peak memory is its own): one warm-up step, then
the median of --steps timed steps of batch --batch at exactly T tokens per text. The steps are
FedSilo's own: AdamW on cross-entropy without DP; make_private + backward_private + step with DP.

    python bench/dp_speed.py [--profile quick|full] [--steps 4] [--out DIR]

Without --profile the full profile's settings are used (steps 4, T=64,128); results go to
DIR/dp_speed.json and .md (default bench/results/PROFILE, the suite's convention).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from harness import bench_args, bench_header, log, out_dir, write_result

PROFILES = {"quick": {"steps": 2, "lengths": "64"}, "full": {"steps": 4, "lengths": "64,128"}}
CONFIGS = [  # (name, trainable, dp, ghost)
    ("non-private LoRA", "lora", False, False),
    ("DP LoRA (hooks)", "lora", True, False),
    ("non-private full", "full", False, False),
    ("DP full (hooks)", "full", True, False),
    ("DP full (ghost)", "full", True, True),
]


def one(trainable: str, dp: bool, ghost: bool, length: int, batch: int, steps: int, device: str = "cpu",
        model_name: str = "") -> dict:
    """One configuration's timed steps (model_name: a path or name; "" = the embedded MiniLM)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from client.private_train import DPStepPlan, backward_private, make_private
    from common.batching import Encoded, collate
    from common.config import RunConfig
    from common import device as devices
    from common.model import build_model, load_tokenizer

    torch.manual_seed(0)
    where = devices.resolve(device)
    cfg = RunConfig.from_dict({"labels": "a,b", "trainable": trainable, "model": model_name})
    model, tok = build_model(cfg).to(where), load_tokenizer(model_name)
    rng = np.random.default_rng(0)
    ids = [[tok.cls_token_id, *rng.integers(1000, 20000, length - 2).tolist(), tok.sep_token_id] for _ in range(batch)]
    data = Encoded(ids, rng.integers(0, 2, batch))
    idx = np.arange(batch)
    if dp:
        module, optimizer = make_private(model, 1e-3, DPStepPlan(1.0, 0.1, 1, 1.0), batch, ghost)

        def step():
            optimizer.zero_grad(set_to_none=True)
            backward_private(module, optimizer, data, idx, tok.pad_token_id, ghost)
            optimizer.step()
    else:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

        def step():
            b = collate(data, idx, tok.pad_token_id, where)
            labels = b.pop("labels")
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(**b).logits, labels).backward()
            optimizer.step()
    step()  # warm-up
    times = []
    for _ in range(steps):
        if where.type == "cuda":
            torch.cuda.synchronize(where)  # time the GPU's work, not its queueing
        t0 = time.perf_counter()
        step()
        if where.type == "cuda":
            torch.cuda.synchronize(where)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    row = {"device": str(where), "samples_per_s": round(batch / med, 2), "step_s": round(med, 3),
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    if where.type == "cuda":
        row["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated(where) / 2**30, 3)
    return row


def main() -> int:
    p = bench_args(__doc__.splitlines()[0])
    p.set_defaults(profile="full")
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration [profile's]")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lengths", default=None, help="comma-separated token counts [profile's]")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.steps = args.steps or PROFILES[args.profile]["steps"]
    args.lengths = args.lengths or PROFILES[args.profile]["lengths"]
    if args.child:
        trainable, dp, ghost, length, batch, steps, device, *model = args.child
        print(json.dumps(one(trainable, dp == "1", ghost == "1", int(length), int(batch), int(steps), device,
                             *model)))
        return 0
    header = bench_header("dp_speed", args.profile, [0])  # seed 0: torch and the random token ids
    rows = []
    for length in map(int, args.lengths.split(",")):
        for name, trainable, dp, ghost in CONFIGS:
            out = subprocess.run([sys.executable, __file__, "--child", trainable, str(int(dp)), str(int(ghost)),
                                  str(length), str(args.batch), str(args.steps), args.device],
                                 capture_output=True, text=True, check=True)
            row = {"config": name, "tokens": length, "batch": args.batch, **json.loads(out.stdout.splitlines()[-1])}
            log(json.dumps(row))
            rows.append(row)
    result = {"header": header, "model": "all-MiniLM-L6-v2 (embedded)", "steps": args.steps, "device": args.device,
              "rows": rows}
    by = {(r["config"], r["tokens"]): r["samples_per_s"] for r in rows}
    result["ratios"] = {
        f"T={t}": {"dp_lora_vs_lora": round(by[("DP LoRA (hooks)", t)] / by[("non-private LoRA", t)], 3),
                   "dp_ghost_full_vs_full": round(by[("DP full (ghost)", t)] / by[("non-private full", t)], 3)}
        for t in map(int, args.lengths.split(","))}
    out = write_result(out_dir(args), "dp_speed", result)
    md = ["| config | T=" + " | T=".join(args.lengths.split(",")) + " |", "|---|" + "---|" * len(args.lengths.split(","))]
    for name, *_ in CONFIGS:
        cells = [next(f"{r['samples_per_s']} /s, {r['peak_rss_gb']} GB" for r in rows if r["config"] == name and r["tokens"] == t)
                 for t in map(int, args.lengths.split(","))]
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n\n" + json.dumps(result["ratios"]) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
