"""What the classification head sees: linear probes, plain and DP-SGD, on the frozen embedded model.

FedSilo's classifier used to be transformers' BertForSequenceClassification, whose head reads
BERT's pooler output (the [CLS] state through a dense + tanh layer). all-MiniLM-L6-v2 was trained
as a sentence encoder with *mean pooling* over tokens, so the pooler is not what it was made for.
This benchmark measured how much that matters, without any fine-tuning of the encoder, and is why
FedSilo's head now reads the mean (common/model.py, SentenceClassifier):

  * the frozen embedded model encodes SST-2 texts once (FedSilo's tokenizer, batching, max length);
  * two feature sets: the pooler output (the old head's input), and the attention-masked mean of
    the last hidden states (the current head's input);
  * a linear head (384 -> 2) is trained on each, with n = 900 records (one site's share in the
    utility benchmark's IID split) and n = 3,600 (the four sites' union), for 5 epochs of
    expected batch 64 with Adam at 1e-2, without DP and with DP-SGD at epsilon 8, 3, 1
    (Opacus PrivacyEngine: Poisson sampling, clipping 1.0, PRV accountant, delta 1e-5);
  * accuracy on SST-2 dev, the utility benchmark's test set.

    python bench/head_features.py --profile quick|full [--out DIR]

It is a diagnosis for the utility benchmark's DP arms, not a FedSilo training mode: these heads
are trained centrally, and the per-site DP there trains LoRA + head end to end.
"""

from __future__ import annotations

import statistics
import time
import warnings

import torch

from harness import bench_args, bench_header, log, out_dir, write_result
from utility import DATA, MAX_LENGTH, read_tsv, stratified_subsample

PROFILES = {
    "quick": {"seeds": [42], "train_sizes": [200], "epsilons": [None, 8.0]},
    "full": {"seeds": [42, 43, 44], "train_sizes": [900, 3600], "epsilons": [None, 8.0, 3.0, 1.0]},
}
EPOCHS, BATCH, LR, CLIP, DELTA = 5, 64, 1e-2, 1.0, 1e-5
# Opacus's notices for experiments (non-secure RNG, alpha range of its RDP bound, hooks on a head
# whose input needs no gradient): expected here, and repeated for every head trained.
for notice in ("Secure RNG turned off", "Optimal order is the", "Full backward hook is firing"):
    warnings.filterwarnings("ignore", message=notice)


@torch.no_grad()
def features(encoder, tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """Pooler output and masked mean of the last hidden states, one length-sorted batch at a time."""
    from common.batching import collate, encode, length_sorted_batches

    data = encode(tokenizer, texts, MAX_LENGTH)
    pooled, mean = torch.zeros(len(data), encoder.config.hidden_size), torch.zeros(len(data), encoder.config.hidden_size)
    for idx in length_sorted_batches(data, 64):
        batch = collate(data, idx, tokenizer.pad_token_id or 0)
        out = encoder(**batch)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled[idx] = out.pooler_output
        mean[idx] = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
    return {"pooler": pooled, "mean": mean}


def train_head(x: torch.Tensor, y: torch.Tensor, classes: int, epsilon: float | None,
               seed: int) -> tuple[torch.nn.Module, float | None]:
    from opacus import PrivacyEngine

    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.Adam(head.parameters(), lr=LR)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    sigma = None
    if epsilon is not None:
        head, optimizer, loader = PrivacyEngine(accountant="prv").make_private_with_epsilon(
            module=head, optimizer=optimizer, data_loader=loader, target_epsilon=epsilon, target_delta=DELTA,
            epochs=EPOCHS, max_grad_norm=CLIP)
        sigma = optimizer.noise_multiplier
    for _ in range(EPOCHS):
        for xb, yb in loader:
            if len(xb) == 0:  # an empty Poisson batch: probability about e^-64 at these sizes
                continue
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(head(xb), yb).backward()
            optimizer.step()
    return head, sigma


def main() -> int:
    args = bench_args(__doc__.splitlines()[0]).parse_args()
    prof = PROFILES[args.profile]
    header = bench_header("head_features", args.profile, prof["seeds"])
    from transformers import AutoModel

    from common.model import load_tokenizer, quiet_transformers, resolve_model

    texts, labels = read_tsv(DATA / "sst2/train.tsv")
    test_texts, test_labels = read_tsv(DATA / "sst2/dev.tsv")
    label_set = tuple(sorted(set(labels)))
    quiet_transformers()
    tokenizer, encoder = load_tokenizer(""), AutoModel.from_pretrained(resolve_model("")).eval()  # with its pooler
    started = time.monotonic()
    test = features(encoder, tokenizer, test_texts)
    y_test = torch.tensor([label_set.index(x) for x in test_labels])
    stats = {name: {"mean_norm": round(float(f.norm(dim=1).mean()), 3),
                    "std_across_texts": round(float(f.std(dim=0).mean()), 4)} for name, f in test.items()}
    log(f"head_features: encoded {len(test_texts)} dev texts in {time.monotonic() - started:.0f} s: {stats}")
    rows = []
    for seed in prof["seeds"]:
        for n in prof["train_sizes"]:
            keep = stratified_subsample(labels, n, seed)
            train = features(encoder, tokenizer, [texts[i] for i in keep])
            y = torch.tensor([label_set.index(labels[i]) for i in keep])
            for name in ("pooler", "mean"):
                for eps in prof["epsilons"]:
                    head, sigma = train_head(train[name], y, len(label_set), eps, seed)
                    with torch.no_grad():
                        acc = float((head(test[name]).argmax(1) == y_test).float().mean())
                    rows.append({"seed": seed, "train_examples": len(keep), "features": name, "epsilon": eps,
                                 "noise_multiplier": None if sigma is None else round(sigma, 3),
                                 "accuracy": round(acc, 4)})
                    log(f"head_features: seed {seed} n {len(keep)} {name} epsilon {eps}: accuracy {acc:.4f}")
    summary = []
    for n in dict.fromkeys(r["train_examples"] for r in rows):
        for name in ("pooler", "mean"):
            for eps in prof["epsilons"]:
                accs = [r["accuracy"] for r in rows if (r["train_examples"], r["features"], r["epsilon"]) == (n, name, eps)]
                summary.append({"train_examples": n, "features": name, "epsilon": eps, "seeds": len(accs),
                                "accuracy_mean": round(statistics.fmean(accs), 4),
                                "accuracy_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else None})
    path = write_result(out_dir(args), "head_features", {
        "header": header,
        "setup": {"model": "all-MiniLM-L6-v2 (embedded)", "data": "SST-2: seeded stratified subsample of "
                  "train.tsv per seed and size; scored on dev.tsv", "epochs": EPOCHS, "expected_batch": BATCH,
                  "optimizer": f"Adam lr {LR}", "dp": f"Opacus PrivacyEngine, Poisson sampling, clipping {CLIP}, "
                  f"delta {DELTA}, PRV accountant", "max_length": MAX_LENGTH, "test_examples": len(test_texts),
                  "majority_class_accuracy": round(max(map(test_labels.count, label_set)) / len(test_labels), 4)},
        "feature_stats_on_dev": stats, "rows": rows, "summary": summary})
    log(f"head_features: wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
