"""Round wall time with and without SecAgg+, and bytes each site sends per round.

Runs fl-sim (Flower's simulation engine) with a tiny BERT for one round at each federation
size, with and without secure aggregation, side by side in one run. Round time is the
ServerApp's own measure of the round (metrics.jsonl "seconds": sampling, training at every
site, aggregation, evaluation). Bytes per site are the serialized size of the model update a
site's train reply carries: float32 deltas without SecAgg+, with it the masked quantised vector
built by the steps of Flower's secaggplus_mod (int64 after masking, so twice the float32 size).
bench/traffic.py measures what actually crosses the wire, protocol overhead included.

    python bench/secagg_overhead.py [--profile quick|full] [--sites 3,10] [--out DIR]

Without --profile the full profile's sizes are used (3 and 10 sites); results go to
DIR/secagg_overhead.json and .md (default bench/results/PROFILE, the suite's convention).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from flwr.common import ndarray_to_bytes

from harness import bench_args, bench_header, device_flags, log, out_dir, use_device, write_result

BIN = Path(sys.executable).parent
PROFILES = {"quick": "3", "full": "3,10"}
DATA_SEED, SEED = 3, 42  # the demo data's; fl-sim's (its default)


def masked_bytes(weights: list[np.ndarray]) -> int:
    """Serialized size of the masked vector a site sends under SecAgg+: the steps of Flower's
    secaggplus_mod (quantise, weight, add a seeded mask, mod 2**32, ndarray_to_bytes)."""
    from flwr.common import ndarray_to_bytes
    from flwr.common.secure_aggregation.ndarrays_arithmetic import factor_combine, parameters_addition, parameters_mod
    from flwr.common.secure_aggregation.quantization import quantize
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    mod_range = 2**32  # SecAggPlusWorkflow's default modulus_range (SECAGG_MODULUS in server/secure_aggregation.py)
    quantized = factor_combine(1, quantize([w.astype(np.float32) for w in weights], 1.0, 2**22))
    masked = parameters_mod(parameters_addition(
        quantized, pseudo_rand_gen(b"\0" * 32, mod_range, [q.shape for q in quantized])), mod_range)
    return int(sum(len(ndarray_to_bytes(m)) for m in masked))


def main() -> int:
    p = bench_args(__doc__.splitlines()[0])
    p.set_defaults(profile="full")
    p.add_argument("--sites", default=None, help="comma-separated federation sizes [profile's]")
    args = use_device(p.parse_args())
    args.sites = args.sites or PROFILES[args.profile]
    header = bench_header("secagg_overhead", args.profile, [SEED])
    from common.demo_data import write_demo

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from common.model import save_tiny_bert  # imports torch: only when needed
        model = save_tiny_bert(tmp / "tiny")
        for sites in map(int, args.sites.split(",")):
            data = tmp / f"data-{sites}"
            write_demo(data, sites=sites, per_site=100, seed=DATA_SEED)
            for secure in (False, True):
                run_dir = tmp / f"run-{sites}-{secure}"
                cmd = [str(BIN / "fl-sim"), "--sites", str(sites), "--data", str(data / "all.tsv"), "--model",
                       str(model), "--rounds", "1", "--seed", str(SEED), "--no-dp", "--batch-size", "16",
                       "--run-dir", str(run_dir), "--secure-aggregation" if secure else "--no-secure-aggregation", *device_flags()]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
                    return 1
                record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
                weights = list(np.load(run_dir / "rounds" / "round-0001.npz").values())
                plain = int(sum(len(ndarray_to_bytes(w.astype(np.float32))) for w in weights))
                row = {"sites": sites, "secure_aggregation": secure, "round_seconds": record["seconds"],
                       "update_bytes_per_site": masked_bytes(weights) if secure else plain}
                log(json.dumps(row))
                rows.append(row)
    by = {(r["sites"], r["secure_aggregation"]): r for r in rows}
    overhead = {str(s): round(by[(s, True)]["round_seconds"] / by[(s, False)]["round_seconds"] - 1, 3)
                for s in map(int, args.sites.split(","))}
    result = {"header": header, "model": "tiny BERT (2 layers, hidden 32), LoRA, fl-sim", "data_seed": DATA_SEED,
              "update_bytes": "serialized size (Flower's ndarray_to_bytes) of the update tensors a site sends: float32 "
                              "deltas, or under SecAgg+ the masked vector as Flower's secaggplus_mod builds it; "
                              "bench/traffic.py measures the bytes on the wire",
              "rows": rows, "round_time_overhead": overhead}
    out = write_result(out_dir(args), "secagg_overhead", result)
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
