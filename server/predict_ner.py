"""fl-predict for a run of task ner: each text's entities, typed, with character spans.

A text is split into words the way CoNLL files are (runs of letters and digits, each other
non-space character alone), tagged word by word by the final model (the first sub-token of each
word carries its tag, as in training), and the IOB2 tags are joined into entities whose `start`
and `end` index the text as given.
"""

from __future__ import annotations

import re

import numpy as np

from common.conll import entity_spans

_WORD = re.compile(r"\w+|[^\w\s]")


def words_of(text: str) -> list[tuple[str, int, int]]:
    """(word, start, end) of each word of `text`."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def tag_texts(tokenizer, model, texts: list[str], max_length: int) -> list[dict]:
    """{"text", "entities": [{"type", "text", "start", "end", "score"}]} per text; score: the
    mean probability of the entity's words' predicted tags."""
    import torch

    from common.device import of
    from common.token_model import collate_sentences, encode_sentences

    split = [words_of(t) for t in texts]
    words = [[w for w, _, _ in s] or ["."] for s in split]  # an empty text still gets a row
    enc = encode_sentences(tokenizer, words, None, max_length)
    tags = model.config.id2label
    rows = []
    with torch.no_grad():
        for i, (text, spans) in enumerate(zip(texts, split)):
            batch = collate_sentences(enc, [i], tokenizer.pad_token_id or 0, of(model))
            batch.pop("labels")
            probs = torch.softmax(model(**batch).logits[0], -1).float().cpu().numpy()
            chosen, score = ["O"] * len(spans), np.zeros(len(spans))
            seen = set()
            for position, word in enumerate(enc.word_ids[i]):
                if word is not None and word < len(spans) and word not in seen:  # first sub-token only
                    seen.add(word)
                    chosen[word], score[word] = tags[int(probs[position].argmax())], float(probs[position].max())
            entities = [{"type": kind, "text": text[spans[a][1]:spans[b - 1][2]], "start": spans[a][1],
                         "end": spans[b - 1][2], "score": round(float(score[a:b].mean()), 4)}
                        for kind, a, b in entity_spans(chosen)]
            rows.append({"text": text, "entities": entities})
    return rows


def marked(row: dict) -> str:
    """fl-predict --format text: the text with each entity as [words](TYPE)."""
    text, out, at = row["text"], [], 0
    for e in row["entities"]:
        out += [text[at:e["start"]], f"[{text[e['start']:e['end']]}]({e['type']})"]
        at = e["end"]
    return "".join(out) + text[at:]
