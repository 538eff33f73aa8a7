"""One real round of the real ServerApp (server/app.py run()) and the real ClientApp at three sites,
through an in-process Grid that records every message (tests/inprocess_grid.py), with each site's
true update captured before any masking: what the curious-server tests attack."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID

import client.site_round as site_round
from client import head_release
from client.app import app as client_app
from client.site import site_data
from common.config import RunConfig
from common.model import load_tokenizer
from common.updates import pack
from server.app import run as server_run
from tests.helpers import LABELS
from tests.inprocess_grid import InProcessGrid

# The node-config keys fl-client sets for its SuperNode (kept in one place: the names may change).
SITE, DATA, DP, LEDGER, AUDIT_LOG, AUDIT_KEY = "site", "data-path", "dp", "ledger", "audit-log", "audit-key"
ALLOW_UNMASKED = "allow-unmasked-updates"  # the site operator's consent to send a plain (unmasked) update
ALLOW_MODEL = "allow-model"  # the base models the site's operator allows (fl-client --allow-model)

PII_ROW = "Dear bank, my name is Mary Johnson, email mary.johnson@example.com, my card was declined."
SITES = {2**40 + 7919 * i: name for i, name in enumerate("ABC")}  # node id -> site (Flower's ids are large)
GROUP_COLUMN, RARE_GROUP = "ward", "rare_ward"  # every site reports by ward (fl-client --group-column)


@dataclass
class Round:
    """One recorded run: the grid's record, each site's true update (as its SiteRound computed
    it, before any masking) and number of training examples, and what the server ended with."""
    grid: InProcessGrid
    deltas: dict[str, np.ndarray]
    examples: dict[str, int]
    aggregate: np.ndarray  # the global model's change over the round
    summary: dict
    texts: set[str]  # every site's records, raw and redacted
    token_grams: set[tuple[int, ...]]  # every run of 4 token ids of those texts
    cfg: RunConfig = None
    train_tokens: dict[str, set[int]] = field(default_factory=dict)  # token ids of each site's training split
    train_labels: dict[str, np.ndarray] = field(default_factory=dict)  # class ids of each site's training split

    def replies(self, name: str):
        return [m for m in self.grid.received if SITES[m.metadata.src_node_id] == name]


def site_files(demo_dir, tmp_path) -> dict[str, object]:
    """Each site's demo rows with a group column (GROUP_COLUMN): 'north' and 'south', and at site A
    a few records (the PII row among them) of RARE_GROUP, too small ever to be reported."""
    files = {}
    for name in SITES.values():
        header, *rows = (demo_dir / f"site-{name}.tsv").read_text().splitlines()
        rows += [f"{PII_ROW}\tcard"] if name == "A" else []
        wards = [RARE_GROUP if name == "A" and (i < 3 or i == len(rows) - 1) else ("north", "south")[i % 2]
                 for i in range(len(rows))]
        files[name] = tmp_path / f"site-{name}.tsv"
        files[name].write_text("\n".join([f"{header}\t{GROUP_COLUMN}"] + [f"{r}\t{w}" for r, w in zip(rows, wards)])
                               + "\n")
    return files


def node_config(name: str, data, tmp_path, dp: bool = True, **extra) -> dict:
    return {SITE: name, DATA: str(data), DP: dp, LEDGER: str(tmp_path / f"{name}.ledger.json"),
            AUDIT_LOG: str(tmp_path / f"{name}.audit.jsonl"), AUDIT_KEY: str(tmp_path / f"{name}.audit.key"),
            **extra}


def run_round(tiny_model, demo_dir, tmp_path, secure: bool, consent: bool = True, head_init: str = "none",
              exact: dict | None = None, trainable: str = "lora", dp: bool = True) -> Round:
    """One round; head_init "stats" makes it the head-statistics release (each site's exact,
    noise-free statistics then go into `exact`, computed by the test from the site's own state)."""
    files = site_files(demo_dir, tmp_path)
    cfg = RunConfig.from_dict({"model": str(tiny_model), "labels": LABELS, "rounds": 1, "batch-size": 32,
                               "min-sites": 3, "round-timeout": 120.0, "secure-aggregation": secure,
                               "run-dir": str(tmp_path / "run"), "head-init": head_init,
                               "trainable": trainable})
    extra = {ALLOW_MODEL: str(tiny_model), "group-column": GROUP_COLUMN}
    if not secure and consent:  # SecAgg+ must not need the consent
        extra[ALLOW_UNMASKED] = True
    grid = InProcessGrid(client_app, {nid: node_config(name, files[name], tmp_path, dp, **extra)
                                      for nid, name in SITES.items()}, cfg.to_flat())
    deltas, examples, train_tokens, train_labels = {}, {}, {}, {}
    serve = site_round.serve

    def spy(request):  # the site's own result, before the ClientApp's mods (SecAgg+) see it
        result = serve(request)
        if request["op"] == "fit":
            name = request["node_config"][SITE]
            deltas[name], examples[name] = result[0][0].astype(np.float64), result[1]
            site = site_round._current[1]
            train_tokens[name] = {int(t) for ids in site.train_data.ids for t in ids}
            train_labels[name] = np.asarray(site.train_data.labels)
            if exact is not None:
                exact[name] = (pack(head_release.release(site.model, site.train_data, len(cfg.labels), site.pad_id,
                                                         None))[0].astype(np.float64), result[2])
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(site_round, "serve", spy)
        server_run(grid, Context(run_id=1, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(),
                                 run_config=cfg.to_flat()))
    rounds = tmp_path / "run" / "rounds"
    before = np.load(rounds / "round-0000.npz")
    after = np.load(rounds / "round-0001.npz") if (rounds / "round-0001.npz").exists() else before
    aggregate = np.concatenate([(after[k].astype(np.float64) - before[k]).ravel() for k in before.files])

    texts, token_grams = set(), set()
    tokenizer = load_tokenizer(cfg.model)
    for name in SITES.values():
        site = site_data(cfg, {SITE: name, DATA: str(files[name])})
        texts |= set(site.records.texts) | set(site.train.texts) | set(site.eval.texts)
    for ids in tokenizer(sorted(texts), truncation=True, max_length=cfg.max_length)["input_ids"]:
        token_grams |= {tuple(ids[i:i + 4]) for i in range(len(ids) - 3)}
    return Round(grid, deltas, examples, aggregate, json.loads((tmp_path / "run" / "summary.json").read_text()),
                 texts, token_grams, cfg, train_tokens, train_labels)
