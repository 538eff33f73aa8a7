"""The FedSilo ClientApp: one round at a site.

receive global trainable weights -> train on local records -> send the delta (never the data).
Built on Flower's NumPyClient / ClientApp(client_fn=...) stack, the one SecAgg+ runs on.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Context
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp

from client.site import site_data
from client.train import evaluate_local, train_local
from common.batching import encode
from common.config import RunConfig
from common.model import build_model, get_weights, load_tokenizer, set_weights


class SiteClient(NumPyClient):
    def __init__(self, context: Context):
        self.cfg = RunConfig.from_dict(dict(context.run_config))
        self.cfg.require_labels()
        self.site = site_data(self.cfg, dict(context.node_config))
        self.tokenizer = load_tokenizer(self.cfg.model)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.model = build_model(self.cfg)

    def fit(self, parameters, config):
        set_weights(self.model, parameters)
        server_round = int(config.get("server-round", 0))
        data = encode(self.tokenizer, self.site.train.texts, self.cfg.max_length,
                      self.site.train_labels)
        stats = train_local(self.model, data, self.cfg, self.pad_id,
                            seed=self.cfg.seed * 100_003 + server_round,
                            desc=f"site {self.site.name} round {server_round}")
        # Send the change, not the weights: secure aggregation clips what it is given,
        # and deltas are small and centred on zero.
        delta = [new - old for new, old in zip(get_weights(self.model), parameters)]
        print(f"site {self.site.name} round {server_round}: trained on {len(data)} records, "
              f"mean loss {stats['train_loss']:.4f}", flush=True)
        return delta, len(data), {"site": self.site.name, **stats}

    def evaluate(self, parameters, config):
        set_weights(self.model, parameters)
        data = encode(self.tokenizer, self.site.eval.texts, self.cfg.max_length,
                      self.site.eval_labels)
        if len(data) == 0:
            return 0.0, 0, {"site": self.site.name}
        loss, confusion = evaluate_local(self.model, data, self.pad_id, len(self.cfg.labels))
        # Aggregate counts only: the confusion matrix of the site's eval split.
        return loss, len(data), {"site": self.site.name,
                                 "confusion": json.dumps(confusion.tolist())}


def client_fn(context: Context):
    return SiteClient(context).to_client()


app = ClientApp(client_fn=client_fn)
