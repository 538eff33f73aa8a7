"""fl-predict: classify texts with a run's final model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from common.cliparse import Parser
from common.device import DEVICE_HELP
from common.errors import FedSiloError, cli_entry

DESCRIPTION = """Classify texts with the final global model of a FedSilo run directory.
Prints one JSON object per text: the predicted label and its probability; with --explain also the
words that pushed toward and away from that label (Integrated Gradients, Captum). For a run of
task ner: each text's entities instead, with their type, words, character span and score."""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="fl-predict", description=DESCRIPTION)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by fl-server or fl-sim")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a text to classify (repeatable)")
    src.add_argument("--file", metavar="FILE", help="a file with one text per line ('-' = stdin)")
    p.add_argument("--max-length", type=int, default=None,
                   help="truncate texts to this many tokens [default: the run's max-length]")
    p.add_argument("--explain", action="store_true",
                   help="explain each prediction: word attributions by Integrated Gradients on the word "
                        "embeddings (Captum): 'toward' and 'against' list the words that pushed most toward "
                        "and away from the predicted label, 'words' every word with its attribution")
    p.add_argument("--html", metavar="FILE", default=None,
                   help="with --explain: also write a page that colours each word by its attribution")
    p.add_argument("--steps", type=int, default=50,
                   help="with --explain: integration steps (more: a smaller error 'delta') [default: 50]")
    p.add_argument("--format", choices=("json", "text"), default="json",
                   help="json: one JSON object per text; text: one line per text, its label and probability, "
                        "or (task ner) the text with each entity marked [words](TYPE) [default: json]")
    p.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP.replace("the site", "it"))
    return p


def load_final_model(run_dir: Path):
    from transformers import AutoTokenizer

    from common.model import HEAD_FILE, TOKEN_HEAD, load_classifier, quiet_transformers, saved_head
    from common.token_model import load_tagger

    quiet_transformers()
    model_dir = run_dir / "final-model"
    if not (model_dir / "config.json").is_file() or not (model_dir / HEAD_FILE).is_file():
        raise FedSiloError(f"{run_dir}: no final model (final-model/ is missing or incomplete; did the run finish?)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as err:
        raise FedSiloError(f"{model_dir}: cannot load the tokenizer ({str(err).splitlines()[0][:160]})") from None
    tagger = saved_head(model_dir)[1] == TOKEN_HEAD  # a run of task ner
    return tokenizer, (load_tagger if tagger else load_classifier)(model_dir)


def predict(tokenizer, model, texts: list[str], max_length: int) -> list[dict]:
    import torch

    from common.batching import Encoded, collate, encode, length_sorted_batches

    from common.device import of

    enc: Encoded = encode(tokenizer, texts, max_length)
    probs = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    device = of(model)
    with torch.no_grad():
        for idx in length_sorted_batches(enc, 64):
            batch = collate(enc, idx, tokenizer.pad_token_id or 0, device)
            probs[idx] = torch.softmax(model(**batch).logits, -1).float().cpu().numpy()
    labels = model.config.id2label
    return [{"text": t, "label": labels[int(p.argmax())], "probability": round(float(p.max()), 4)}
            for t, p in zip(texts, probs)]


@cli_entry("fl-predict")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from common.device import resolve

    device = resolve(args.device)  # CUDA where there is none: one line, before anything is loaded
    if args.html and not args.explain:
        raise FedSiloError("--html writes the explanations: give --explain too")
    if args.explain and args.format == "text":
        raise FedSiloError("--explain writes JSON: leave out --format text")
    if not 1 <= args.steps <= 1000:
        raise FedSiloError(f"--steps {args.steps}: give 1 to 1000")
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise FedSiloError(f"{run_dir}: not a run directory")
    if args.text:
        texts = args.text
    else:
        try:
            raw = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise FedSiloError(f"{args.file}: cannot read ({getattr(err, 'strerror', None) or err})") from None
        texts = [line for line in raw.splitlines() if line.strip()]
    if not texts:
        raise FedSiloError("nothing to classify")
    max_length = args.max_length
    if max_length is None:
        config = run_dir / "config.json"
        max_length = json.loads(config.read_text())["max_length"] if config.is_file() else 128
    tokenizer, model = load_final_model(run_dir)
    model.to(device)
    if getattr(model, "head_reads", None):  # a tagger (task ner): entities, not a label
        if args.explain:
            raise FedSiloError("--explain explains a classifier's label; this run's model tags entities (task ner)")
        from server.predict_ner import marked, tag_texts

        for row in tag_texts(tokenizer, model, texts, max_length):
            print(marked(row) if args.format == "text" else json.dumps(row, ensure_ascii=False))
        return 0
    rows = predict(tokenizer, model, texts, max_length)
    if args.explain:
        from server.explain import explain, render_html

        explanations = explain(tokenizer, model, texts, max_length, args.steps)
        for row, exp in zip(rows, explanations):
            row["explanation"] = {k: exp[k] for k in ("toward", "against", "words", "delta")}
        if args.html:
            from common.files import atomic_write_text

            try:
                atomic_write_text(Path(args.html), render_html(texts, explanations))
            except OSError as err:
                raise FedSiloError(f"--html {args.html}: cannot write ({err.strerror})") from None
    for row in rows:
        print(f"{row['label']}\t{row['probability']:.4f}\t{row['text']}" if args.format == "text"
              else json.dumps(row, ensure_ascii=False))
    if args.html:
        print(f"fl-predict: wrote {args.html}", file=sys.stderr)
    return 0
