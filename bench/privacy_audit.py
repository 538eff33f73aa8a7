"""Privacy audit: an empirical lower bound on epsilon from canaries planted at one site.

The one-run audit of Steinke, Nasr and Jagielski (2023, arXiv:2305.08846): m canary records
(3 random vocabulary words each, a random label) are drawn; each goes into site A's data file
with probability 1/2, independently. One federation runs on the deployment engine (fl-server
and fl-clients on 127.0.0.1, the defaults a site gets: LoRA, AdamW or DP-SGD). Then the curious
server attacks: it knows the weights it sent (rounds/round-0000.npz) and what came back
(rounds/round-0001.npz), and scores each canary by how much the round lowered its loss (its
loss under the weights sent minus its loss under the weights returned). The canaries with the
highest scores are guessed "in"; Google's jax_privacy
(`CanaryScoreAuditor.epsilon_one_run`, Bonferroni over every threshold) turns the number of
correct guesses into an epsilon that the run provably exceeds with 95% confidence, if it was
not (epsilon, delta)-DP. A bound above the claimed epsilon would falsify the claim.

Threat models (one row each):
  * "aggregate": 3 sites, SecAgg+ on (FedSilo's default). The server sees only the sum of the
    sites' updates: the audit attacks site A's canaries through the other sites' updates.
  * "one site's update": site A alone, SecAgg+ off (fl-client --allow-unmasked-updates). The
    server sees A's update itself: the strongest position a server can be in.
Two mechanisms, each in one round: the head-statistics release (round 1 of FedSilo's defaults,
`--head-init stats`: the whole epsilon goes to it) under both threat models with DP off and at
epsilon 1, 3 and 8 per site; and DP-SGD (`--head-init none`, LoRA, 4 local epochs) on one site's
update, DP off and epsilon 8. `full`: 400 canaries, 100 SST-2 records a site; `quick`: 200
canaries, 150 records, the release on one site's update only, DP off and epsilon 8.
`epsilon` is what site A reported (record level, PRV accountant, delta 1e-5).

    python bench/privacy_audit.py --profile quick|full [--out DIR]
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from harness import (bench_args, bench_header, earlier_rows, log, out_dir, run_deployment, subset, use_device,
                     write_result)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "train.tsv"
LABELS = ("negative", "positive")
CONFIDENCE, WORDS = 0.95, 3
MIN_POWER = 0.25  # a DP-off row must prove at least this much leakage: the audit can see a leak
MECHANISMS = {  # what the round releases -> (head-init, local epochs)
    "head statistics": ("stats", 1),  # round 1 of the defaults: one noisy release, no training
    "DP-SGD": ("none", 4),  # LoRA + head trained from the initial model, 4 local epochs
}
PROFILES = {  # canaries, normal records per site, rows (mechanism, threat model, epsilon or None = DP off)
    "quick": {"canaries": 200, "per_site": 150,
              "rows": [("head statistics", "one site's update", e) for e in (None, 8.0)]},
    "full": {"canaries": 400, "per_site": 100,
             "rows": [("head statistics", t, e) for t in ("one site's update", "aggregate")
                      for e in (None, 1.0, 3.0, 8.0)] + [("DP-SGD", "one site's update", e) for e in (None, 8.0)]},
}
THREATS = {  # threat model -> (sites, server flags, client flags)
    "aggregate": (3, ["--min-sites", 3], []),
    "one site's update": (1, ["--min-sites", 1, "--no-secure-aggregation"], ["--allow-unmasked-updates"]),
}


def make_canaries(tokenizer, m: int, seed: int) -> tuple[list[str], list[str], np.ndarray]:
    """m texts of WORDS random whole-word vocabulary entries, random labels, and who is in (1/2 each).
    Few words each: a mean-pooled text of many random words drifts to the average embedding, where
    every canary looks alike and none stands out."""
    rng = random.Random(seed)
    words = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and w.islower() and len(w) >= 4)
    texts = [" ".join(rng.sample(words, WORDS)) for _ in range(m)]
    labels = [rng.choice(LABELS) for _ in range(m)]
    included = np.array([rng.random() < 0.5 for _ in range(m)])
    return texts, labels, included


def site_files(work: Path, sites: int, per_site: int, canaries: list[tuple[str, str]], seed: int) -> list[Path]:
    """Disjoint seeded slices of SST-2 train, one file a site; site A's also holds the included canaries."""
    rows = DATA.read_text(encoding="utf-8").splitlines()[1:]
    pick = np.random.default_rng(seed).permutation(len(rows))[: sites * per_site]
    paths = []
    for i in range(sites):
        lines = [rows[j] for j in pick[i * per_site:(i + 1) * per_site]]
        if i == 0:
            lines += [f"{t}\t{y}" for t, y in canaries]
            random.Random(seed).shuffle(lines)
        path = work / f"site-{'ABC'[i]}.tsv"
        path.write_text("\n".join(["text\tlabel", *lines]) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def canary_scores(run_dir: Path, head_init: str, seed: int, texts: list[str], labels: list[str]):
    """The curious server's score of each canary: how much the round's update lowered its loss
    (loss under the weights sent minus loss under the weights that came back)."""
    from client.train import predict_logits
    from common.batching import encode
    from common.config import RunConfig
    from common.model import build_model, load_tokenizer, set_weights
    from server.run_dir import RunDir

    cfg = RunConfig.from_dict({"labels": ",".join(LABELS), "seed": seed, "head-init": head_init})
    rd, model, tokenizer = RunDir(run_dir), build_model(cfg), load_tokenizer(cfg.model)
    y = np.array([LABELS.index(label) for label in labels])
    enc = encode(tokenizer, texts, cfg.max_length, y)
    losses = []
    for server_round in (0, 1):
        set_weights(model, rd.load_round_weights(server_round))
        logits = predict_logits(model, enc, tokenizer.pad_token_id).astype(np.float64)  # eval mode: no dropout
        log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        losses.append(-log_p[np.arange(len(y)), y])
    return losses[0] - losses[1], losses


def lower_bound(scores: np.ndarray, included: np.ndarray, delta: float) -> dict:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # jax_privacy imports JAX; the bound needs no accelerator
    from jax_privacy.auditing import CanaryScoreAuditor

    auditor = CanaryScoreAuditor(scores[included], scores[~included])
    return {"epsilon_lower_bound": round(float(auditor.epsilon_one_run(1 - CONFIDENCE, delta)), 4),
            "auroc": round(float(auditor.attack_auroc()), 4)}


def one_row(mechanism: str, threat: str, epsilon: float | None, prof: dict, seed: int, work: Path) -> dict:
    sites, server_flags, client_flags = THREATS[threat]
    head_init, epochs = MECHANISMS[mechanism]
    from common.model import load_tokenizer

    texts, labels, included = make_canaries(load_tokenizer(""), prof["canaries"], seed)
    files = site_files(work, sites, prof["per_site"], [(t, y) for t, y, s in zip(texts, labels, included) if s], seed)
    dp = ["--no-dp"] if epsilon is None else ["--target-epsilon", epsilon, "--privacy-budget", epsilon]
    started = time.monotonic()
    run_dir = run_deployment(work, files, ["--labels", ",".join(LABELS), "--rounds", 1, "--head-init", head_init,
                                           "--local-epochs", epochs, "--seed", seed, *server_flags],
                             [*client_flags, *dp])
    fit = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["fit"]["site-A"]
    delta = fit.get("delta") or 1e-5
    scores, losses = canary_scores(run_dir, head_init, seed, texts, labels)
    return {"mechanism": mechanism, "threat_model": threat, "sites": sites, "local_epochs": epochs, "dp": epsilon is not None, "target_epsilon": epsilon,
            "epsilon": fit.get("epsilon") if epsilon is not None else None, "delta": delta,
            "noise_multiplier": fit.get("noise_multiplier"), "canaries": len(texts),
            "canaries_in": int(included.sum()), "confidence": CONFIDENCE, **lower_bound(scores, included, delta),
            "mean_score_in": round(float(scores[included].mean()), 6),
            "mean_score_out": round(float(scores[~included].mean()), 6),
            "wall_seconds": round(time.monotonic() - started, 1),
            # what the bound was computed from, so anyone can recompute it (or try another score)
            "canary_in": included.astype(int).tolist(), "canary_loss_sent": np.round(losses[0], 5).tolist(),
            "canary_loss_returned": np.round(losses[1], 5).tolist()}


def row_name(mechanism: str, threat: str, epsilon: float | None) -> str:
    return f"{mechanism}, {threat}, " + ("DP off" if epsilon is None else f"epsilon {epsilon:g}")


def main() -> int:
    parser = bench_args(__doc__.splitlines()[0])
    parser.add_argument("--rows", default="", help="comma-separated row numbers of the profile to run, from 1 "
                        "(default: all); the others are kept from the earlier result file")
    args = use_device(parser.parse_args())
    prof, seed = PROFILES[args.profile], 42
    numbers = subset(args.rows, list(range(1, len(prof["rows"]) + 1)), "rows", parser)
    wanted = [prof["rows"][int(n) - 1] for n in numbers]
    header = bench_header("privacy_audit", args.profile, [seed])
    path = out_dir(args) / "privacy_audit.json"
    rows, _ = earlier_rows(path, args.profile, lambda r: (r["mechanism"], r["threat_model"], r["target_epsilon"]),
                           set(wanted))
    for mechanism, threat, epsilon in wanted:
        log(f"privacy_audit: {row_name(mechanism, threat, epsilon)}: {prof['canaries']} canaries at site A")
        with tempfile.TemporaryDirectory(prefix="fedsilo-audit-") as work:
            try:
                row = {"status": "ok", **one_row(mechanism, threat, epsilon, prof, seed, Path(work))}
            except RuntimeError as err:
                row = {"status": "failed", "mechanism": mechanism, "threat_model": threat, "target_epsilon": epsilon,
                       "error": str(err)[-2000:]}
        rows.append(row)
        log(f"privacy_audit:   -> claimed epsilon {row.get('epsilon')}, lower bound {row.get('epsilon_lower_bound')} "
            f"(AUROC {row.get('auroc')}, {row['status']})")
    order = {key: i for i, key in enumerate(prof["rows"])}
    rows.sort(key=lambda r: order.get((r["mechanism"], r["threat_model"], r["target_epsilon"]), len(order)))
    ok = [r for r in rows if r["status"] == "ok"]
    checks = {"dp_bound_at_most_claimed": all(r["epsilon_lower_bound"] <= r["epsilon"] for r in ok if r["dp"]),
              "dp_off_one_site_detects_leakage": all(r["epsilon_lower_bound"] >= MIN_POWER for r in ok
                                                     if not r["dp"] and r["threat_model"] == "one site's update")}
    write_result(out_dir(args), "privacy_audit", {
        "header": header,
        "setup": {"method": "one-run audit (Steinke, Nasr, Jagielski 2023) with jax_privacy.auditing."
                            "CanaryScoreAuditor.epsilon_one_run (one-sided guesses, Bonferroni over thresholds)",
                  "canaries": prof["canaries"], "records_per_site": prof["per_site"],
                  "canary": f"{WORDS} random vocabulary words, a random label, in site A's file with probability 1/2",
                  "data": "SST-2 train (disjoint seeded slices)", "rounds": 1, "trainable": "lora",
                  "mechanisms": {m: {"head_init": h, "local_epochs": e} for m, (h, e) in MECHANISMS.items()},
                  "score": "the canary's loss under the weights sent minus under the weights returned",
                  "min_power": MIN_POWER},
        "rows": rows, "checks": checks})
    log(f"privacy_audit: {checks}; wrote {path}")
    # A DP row whose bound passes its claim is a broken guarantee (or a 5% fluke): fail loudly. The
    # power check is data-dependent and only recorded (quick, with 200 canaries, is a smoke run).
    return 0 if len(ok) == len(rows) and checks["dp_bound_at_most_claimed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
