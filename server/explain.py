"""Why the model predicted what it did: word attributions by Integrated Gradients (Captum).

For each text, Captum's LayerIntegratedGradients integrates the gradient of the predicted class's
logit along the straight path from a baseline to the input in the word-embedding space. The
baseline is the same text with every word token replaced by [PAD] ([CLS], [SEP] and the attention
mask kept), so an attribution says how much that word, against no word, moved the logit. By IG's
completeness the attributions sum to logit(input) - logit(baseline), up to the integration error
Captum reports as `delta`. Sub-token attributions are summed into the words they came from
(the fast tokenizer's word ids and character offsets), so each word is a span of the input text.

Why Captum: the library PyTorch's own team keeps for attributions, with IG, its convergence check
and layer variants; no attribution code of our own.
"""

from __future__ import annotations

import html

TOP_WORDS = 5


def explain(tokenizer, model, texts: list[str], max_length: int, steps: int = 50) -> list[dict]:
    import torch
    from captum.attr import LayerIntegratedGradients

    from common.device import of

    model.eval()
    device = of(model)

    def logits(input_ids, attention_mask):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits

    ig = LayerIntegratedGradients(logits, model.encoder.get_input_embeddings())
    labels = model.config.id2label
    pad = tokenizer.pad_token_id or 0
    out = []
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True,
                        return_special_tokens_mask=True, return_tensors="pt")
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        special = enc["special_tokens_mask"].to(device).bool()
        baseline = torch.where(special, ids, torch.full_like(ids, pad))
        with torch.no_grad():
            scores = logits(ids, mask)[0]
        target = int(scores.argmax())
        attr, delta = ig.attribute(ids, baselines=baseline, additional_forward_args=(mask,), target=target,
                                   n_steps=steps, return_convergence_delta=True)
        per_token = attr.sum(dim=-1)[0].detach().float().cpu().tolist()
        words: dict[int, dict] = {}
        for pos, (word, (start, end)) in enumerate(zip(enc.word_ids(0), enc["offset_mapping"][0].tolist())):
            if word is None:
                continue  # [CLS], [SEP]: the same in the baseline
            entry = words.setdefault(word, {"start": start, "end": end, "attribution": 0.0})
            entry["start"], entry["end"] = min(entry["start"], start), max(entry["end"], end)
            entry["attribution"] += per_token[pos]
        spans = [{"word": text[w["start"]:w["end"]], "start": w["start"], "end": w["end"],
                  "attribution": round(w["attribution"], 5)} for w in sorted(words.values(), key=lambda w: w["start"])]
        ranked = sorted(spans, key=lambda w: w["attribution"])
        out.append({
            "label": labels[target], "probability": round(float(torch.softmax(scores, -1)[target]), 4),
            "toward": [w["word"] for w in reversed(ranked) if w["attribution"] > 0][:TOP_WORDS],
            "against": [w["word"] for w in ranked if w["attribution"] < 0][:TOP_WORDS],
            "words": spans, "delta": round(float(delta[0]), 6),
        })
    return out


def _colour(value: float, scale: float) -> str:
    alpha = min(1.0, abs(value) / scale) if scale > 0 else 0.0
    rgb = "0,140,60" if value > 0 else "200,30,30"
    return f"rgba({rgb},{alpha * 0.8:.3f})"


def render_html(texts: list[str], explanations: list[dict], title: str = "FedSilo: why the model decided") -> str:
    """One page: each text with its words coloured (green toward the predicted class, red against,
    stronger for larger attributions). Everything from the input is escaped."""
    e = html.escape
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
             ".text{font-size:1.2em;line-height:2;margin:.5em 0 2em}.word{padding:2px 3px;border-radius:3px}"
             ".legend span{padding:2px 6px;margin-right:1em}</style></head><body>",
             f"<h1>{e(title)}</h1>",
             '<p class="legend"><span style="background:rgba(0,140,60,.6)">pushed toward the predicted label</span>'
             '<span style="background:rgba(200,30,30,.6)">pushed away from it</span> '
             "(Integrated Gradients on the word embeddings, Captum)</p>"]
    for i, (text, exp) in enumerate(zip(texts, explanations)):
        scale = max((abs(w["attribution"]) for w in exp["words"]), default=0.0)
        body, at = [], 0
        for w in exp["words"]:
            body.append(e(text[at:w["start"]]))
            body.append(f'<span class="word" style="background:{_colour(w["attribution"], scale)}" '
                        f'title="{w["attribution"]:+.4f}">{e(w["word"])}</span>')
            at = w["end"]
        body.append(e(text[at:]))
        parts.append(f'<h2>{e(exp["label"])} ({exp["probability"]:.2f})</h2>'
                     f'<div class="text" id="text-{i}">{"".join(body)}</div>')
    parts.append("</body></html>")
    return "\n".join(parts)
