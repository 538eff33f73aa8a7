"""NER on NCBI-disease: the entity-level F1 (seqeval, exact match) of a tagger trained
centrally, federated without DP and federated with DP-SGD at epsilon 8 per site, side by side.

NCBI-disease's training sentences go to 4 virtual sites (`fl-sim --task ner`), shuffled (IID) or
by document (`--partition contiguous`: a block of the file each, in its order, which keeps an
abstract's sentences together), each site holding out 10% for the federation's per-round
evaluation. The centralised ceiling is the same code with one site holding every training
sentence and no DP. Every arm trains the default embedded all-MiniLM-L6-v2 with the same recipe
(LoRA + token head, trainable lora; under DP the site's default clipping and noise calibrated to
epsilon 8 over the planned rounds); the final model of each run is then scored on the test file,
which no arm trains on. `--split dev` scores on the dev file instead: recipes are chosen there,
with `--flags` (extra fl-sim options for the arms run) and `--arms`; the chosen ones are RECIPES.

    python bench/ner.py --profile quick|full [--out DIR] [--seeds 42,43] [--split dev|test]
                        [--arms centralised,federated] [--flags "--local-epochs 2"]
"""

from __future__ import annotations

import json
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from harness import (bench_args, bench_header, device_flags, earlier_rows, log, out_dir, run_measured, subset, tail,
                     use_device, write_result)

BIN = Path(sys.executable).parent
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ncbi_disease"
SITES, MAX_LENGTH, EVAL_FRACTION, EPSILON = 4, 96, 0.1, 8.0
ARMS = {  # name: (sites, epsilon or None, partition)
    "centralised": (1, None, "iid"), "federated": (SITES, None, "iid"), "federated DP": (SITES, EPSILON, "iid"),
    "federated by document": (SITES, None, "contiguous"), "federated DP by document": (SITES, EPSILON, "contiguous"),
}
PROFILES = {
    "quick": {"train_sentences": 1200, "score_sentences": 400, "seeds": [42], "rounds": 3, "local_epochs": 1,
              "batch_size": 32},
    "full": {"train_sentences": None, "score_sentences": None, "seeds": [42, 43, 44], "rounds": 3,
             "local_epochs": 1, "batch_size": 64},
}
# fl-sim options per arm on top of the profile, chosen on the dev file (quick profile, seed 42;
# bench/results/quick/ner-dev.json): every weight trains without DP (LoRA's ceiling was 0.58 against
# 0.73); ten epochs overfit the ceiling (0.67), while federation needs five rounds of two local epochs to
# come within 2.3 points. Under DP no probe beat the profile's LoRA recipe (full training is refused).
FULL = ["--trainable", "full", "--learning-rate", "2e-4", "--head-learning-rate", "5e-3", "--batch-size", "16",
        "--local-epochs", "2"]
RECIPES: dict[str, list[str]] = {"centralised": FULL, "federated": FULL + ["--rounds", "5"],
                                 "federated DP": [], "federated by document": FULL + ["--rounds", "5"],
                                 "federated DP by document": []}
FL_SIM_TIMEOUT = 3 * 3600.0


def read(path: Path):
    from common.ner_data import read_sentence_records

    return read_sentence_records(path)


def first(records, n: int | None, seed: int):
    """n sentences drawn with `seed` (all of them for None)."""
    if n is None or n >= len(records):
        return records
    return records.subset(np.sort(np.random.default_rng(seed).permutation(len(records))[:n]))


def write(path: Path, records) -> Path:
    from common.conll import Sentences
    from common.ner_data import as_sentences

    sentences: Sentences = as_sentences(records)
    path.write_text("".join("".join(f"{w}\t{t}\n" for w, t in zip(ws, ts)) + "\n"
                            for ws, ts in zip(sentences.tokens, sentences.tags)), encoding="utf-8")
    return path


def scores(run_dir: Path, held, tags: tuple[str, ...]) -> dict:
    """The final model on held-out sentences: entity-level P / R / F1 and word accuracy."""
    from client.ner_eval import evaluate_tagger
    from common.ner_data import as_sentences, encode_tags
    from common.ner_report import entity_report
    from common.token_model import encode_sentences
    from server.predict import load_final_model

    tokenizer, model = load_final_model(run_dir)
    tag_ids = list(encode_tags(held, tags))
    enc = encode_sentences(tokenizer, as_sentences(held).tokens, tag_ids, MAX_LENGTH)
    _, confusion, counts = evaluate_tagger(model, enc, tag_ids, tags, tokenizer.pad_token_id or 0)
    micro = entity_report(counts)["micro avg"]
    return {"entity_f1": round(micro["f1-score"], 4), "entity_precision": round(micro["precision"], 4),
            "entity_recall": round(micro["recall"], 4), "entities": int(micro["support"]),
            "word_accuracy": round(float(np.trace(confusion) / max(1, confusion.sum())), 4)}


def run_arm(arm: str, data_file: Path, tags, seed: int, prof: dict, work: Path, held, flags: list[str]) -> dict:
    sites, epsilon, scheme = ARMS[arm]
    name = f"{arm.replace(' ', '_')}-seed{seed}"
    run_dir = work / f"run-{name}"
    cmd = [str(BIN / "fl-sim"), "--task", "ner", "--sites", str(sites), "--data", str(data_file),
           "--labels", ",".join(tags), "--rounds", str(prof["rounds"]), "--local-epochs", str(prof["local_epochs"]),
           "--batch-size", str(prof["batch_size"]), "--max-length", str(MAX_LENGTH), "--seed", str(seed),
           "--eval-fraction", str(EVAL_FRACTION), "--partition", scheme, "--no-redact", "--run-dir", str(run_dir), *device_flags()]
    cmd += ["--no-dp"] if epsilon is None else ["--target-epsilon", str(epsilon), "--privacy-budget", str(epsilon)]
    if sites == 1:
        cmd += ["--min-sites", "1", "--no-secure-aggregation"]  # one site: nothing to aggregate securely
    cmd += flags  # later options win: a recipe overrides the profile
    measured = run_measured(cmd, FL_SIM_TIMEOUT, work / f"fl-sim-{name}.log", every=2.0)
    if measured["returncode"] != 0 or not (run_dir / "summary.json").exists():
        return {"status": "timed out" if measured["timed_out"] else "failed", "log_tail": tail(work / f"fl-sim-{name}.log")}
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    result = {"status": "ok", "flags": flags, "wall_seconds": measured["wall_seconds"],
              "site_eval_entity_f1": [r.get("entity_f1") for r in rounds],  # what the coordinator saw, per round
              **scores(run_dir, held, tags)}
    fits = [f for r in rounds for f in r.get("fit", {}).values() if f.get("dp")]
    if fits:
        result["epsilon_spent_max"] = round(max(f["epsilon"] for f in fits), 3)
    shutil.rmtree(run_dir)
    return result


def summarise(rows: list[dict]) -> list[dict]:
    """Mean over seeds per arm and recipe (the dev file holds several recipes per arm); the ceiling
    is the best centralised recipe's."""
    out = []
    for arm in ARMS:
        for flags in dict.fromkeys(tuple(r.get("flags", [])) for r in rows if r["arm"] == arm):
            ok = [r for r in rows if r["arm"] == arm and tuple(r.get("flags", [])) == flags and r["status"] == "ok"]
            if ok:
                mean = lambda key: round(statistics.fmean(r[key] for r in ok), 4)  # noqa: E731
                out.append({"arm": arm, "recipe": " ".join(flags) or "the profile's", "seeds": len(ok),
                            "wall_seconds": mean("wall_seconds"), **{k: mean(k) for k in
                            ("entity_f1", "entity_precision", "entity_recall", "word_accuracy")}})
    ceiling = max((s["entity_f1"] for s in out if s["arm"] == "centralised"), default=None)
    for s in out:
        s["points_below_ceiling"] = None if ceiling is None else round(100 * (ceiling - s["entity_f1"]), 2)
    return out


def main() -> int:
    parser = bench_args(__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="", help="comma-separated subset of the profile's seeds")
    parser.add_argument("--split", choices=("dev", "test"), default="test",
                        help="score the final models on dev (choosing a recipe) or test [default: test]")
    parser.add_argument("--arms", default="", help=f"comma-separated subset of {', '.join(ARMS)}")
    parser.add_argument("--flags", default="", help="extra fl-sim options for every arm run, after its recipe "
                        "(choosing a recipe on --split dev)")
    args = use_device(parser.parse_args())
    prof = PROFILES[args.profile]
    seeds = [int(s) for s in subset(args.seeds, prof["seeds"], "seeds", parser)]
    arms = subset(args.arms, list(ARMS), "arms", parser)
    name = "ner" if args.split == "test" else "ner-dev"
    header = bench_header(name, args.profile, seeds)
    recipe = {arm: RECIPES[arm] + shlex.split(args.flags) for arm in arms}
    rows, _ = earlier_rows(out_dir(args) / f"{name}.json", args.profile,
                           lambda r: (r["arm"], r["seed"], tuple(r.get("flags", []))),
                           {(a, s, tuple(recipe[a])) for a in arms for s in seeds})
    train = read(DATA / "train.conll")
    held = first(read(DATA / f"{args.split}.conll"), prof["score_sentences"], 0)
    from common.ner_data import tag_set

    tags = tag_set(train)

    def save() -> Path:
        return write_result(out_dir(args), name, {
            "header": header, "setup": {"data": f"ncbi_disease (train.conll over the sites, {args.split}.conll scored)",
                                        "sites": SITES, "epsilon": EPSILON, "tags": list(tags), "profile": prof,
                                        "recipes": RECIPES,
                                        "scored_sentences": len(held)},
            "rows": rows, "summary": summarise(rows)})

    with tempfile.TemporaryDirectory(prefix="ner-") as tmp:
        work = Path(tmp)
        for seed in seeds:
            data_file = write(work / f"train-{seed}.conll", first(train, prof["train_sentences"], seed))
            for arm in arms:
                log(f"ner: seed {seed}, {arm} ...")
                row = {"arm": arm, "seed": seed, **run_arm(arm, data_file, tags, seed, prof, work, held, recipe[arm])}
                rows.append(row)
                log(f"ner: seed {seed}, {arm}: " + (f"entity F1 {row['entity_f1']:.3f} (P {row['entity_precision']:.3f} "
                                                    f"R {row['entity_recall']:.3f}), {row['wall_seconds']:.0f} s"
                                                    if row["status"] == "ok" else row["status"]))
                save()
    path = save()
    log(f"ner: wrote {path}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
