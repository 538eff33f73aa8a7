"""The FedSilo ClientApp: one round at a site.

receive global trainable weights -> train on local records (DP-SGD unless the site turned it
off, after charging its own privacy ledger) -> send the delta (never the data).
Built on Flower's NumPyClient / ClientApp(client_fn=...) stack, the one SecAgg+ runs on.
"""

from __future__ import annotations

import json
import sys

from flwr.app import Context, Message
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Error
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS as SECAGGPLUS_CONFIGS

from client.ledger import BudgetExhausted, PrivacyLedger, fingerprint
from client.private_train import DPStepPlan, train_dp
from client.site import site_data
from client.train import evaluate_local, train_local
from common.batching import encode
from common.config import RunConfig
from common.errors import FedSiloError
from common.audit import AuditLog, generate_key
from common.model import build_model, get_weights, load_tokenizer, set_weights, weights_digest
from common.updates import update_problem
from common.privacy import calibrate_noise, sample_rate, steps_per_round


class SiteClient(NumPyClient):
    def __init__(self, context: Context):
        self.cfg = RunConfig.from_dict(dict(context.run_config))
        self.cfg.require_labels()
        self.site = site_data(self.cfg, dict(context.node_config))
        self.tokenizer = load_tokenizer(self.cfg.model)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.model = build_model(self.cfg)
        self.run_id = str(context.run_id)

    def audit(self, kind: str, data: dict) -> None:
        """Append to the site's own signed audit trail (kept next to its data, never sent)."""
        if not self.site.audit_key.exists():
            generate_key(self.site.audit_key)  # plaintext/simulation sites have no kit key
        AuditLog(self.site.audit_log, self.site.audit_key, f"site {self.site.name}").append(
            kind, {"run_id": self.run_id, **data})

    def fit(self, parameters, config):
        server_round = int(config.get("server-round", 0))
        try:
            return self._fit(parameters, server_round)
        except BudgetExhausted as err:
            self.audit("refusal", {"round": server_round, "reason": str(err)})
            raise

    def _fit(self, parameters, server_round: int):
        set_weights(self.model, parameters)
        data = encode(self.tokenizer, self.site.train.texts, self.cfg.max_length,
                      self.site.train_labels)
        desc = f"site {self.site.name} round {server_round}"
        seed = self.cfg.seed * 100_003 + server_round
        if self.site.privacy.dp:
            stats, report = self._train_private(data, server_round, seed, desc)
        else:
            stats = train_local(self.model, data, self.cfg, self.pad_id, seed=seed, desc=desc)
            # Without DP the site says so in every report it sends.
            report = {"dp": False, "train_loss": stats["train_loss"]}
        # Send the change, not the weights: secure aggregation clips what it is given,
        # and deltas are small and centred on zero.
        delta = [new - old for new, old in zip(get_weights(self.model), parameters)]
        problem = update_problem(delta, parameters, self.cfg.max_update_norm)
        if problem:  # e.g. training diverged: say so rather than send it (the server would refuse it)
            self.audit("update_withheld", {"round": server_round, "reason": problem})
            raise FedSiloError(f"site {self.site.name}: update not sent: {problem}")
        print(f"{desc}: trained on {len(data)} records, mean loss {stats['train_loss']:.4f}"
              + (f", epsilon spent {report['epsilon']:.3f}" if report["dp"] else ", NO differential privacy"),
              flush=True)
        redactions = dict(self.site.redactions)
        self.audit("round", {"round": server_round, "data_fingerprint": fingerprint(self.site.records),
                             "received": weights_digest(parameters),
                             "sent": weights_digest(delta), "redactions": redactions,
                             **{k: report[k] for k in ("dp", "epsilon", "delta", "accountant") if k in report}})
        return delta, len(data), {"site": self.site.name, "records": len(self.site.records),
                                  "redactions": json.dumps(redactions, sort_keys=True), **report}

    def _train_private(self, data, server_round: int, seed: int, desc: str):
        """Charge the ledger first (refusing past the budget), then run DP-SGD."""
        privacy, n = self.site.privacy, len(data)
        delta = privacy.delta_for(len(self.site.records))
        q = sample_rate(self.cfg.batch_size, n)
        steps = steps_per_round(q, self.cfg.local_epochs)
        sigma = calibrate_noise(privacy.target_epsilon, delta, q, steps * self.cfg.rounds, privacy.accountant)
        ledger = PrivacyLedger(self.site.ledger_path, fingerprint(self.site.records),
                               len(self.site.records), delta, privacy.accountant)
        epsilon = ledger.charge(site=self.site.name, run_id=self.run_id, server_round=server_round,
                                noise_multiplier=sigma, sample_rate=q, steps=steps,
                                budget=privacy.privacy_budget)
        plan = DPStepPlan(noise_multiplier=sigma, sample_rate=q, steps=steps,
                          max_grad_norm=privacy.max_grad_norm)
        stats = train_dp(self.model, data, self.cfg.lr_for(dp=True), plan, self.pad_id, seed,
                         ghost=self.cfg.trainable == "full", desc=desc)
        # Only privacy bookkeeping travels: the training loss is not DP-protected, so it stays here.
        return stats, {"dp": True, "epsilon": epsilon, "delta": delta, "budget": privacy.privacy_budget,
                       "accountant": privacy.accountant, "noise_multiplier": sigma, "sample_rate": q,
                       "steps": steps}

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


def site_errors_mod(msg: Message, context: Context, call_next) -> Message:
    """A problem the site's operator can fix (bad data file, label outside the set, ...) becomes
    one line on the site's console and an error reply the server names in its round summary,
    instead of a traceback."""
    try:
        return call_next(msg, context)
    except FedSiloError as err:
        print(f"fl-client: error: {err}", file=sys.stderr, flush=True)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(err)), reply_to=msg)


def secure_aggregation_mod(msg: Message, context: Context, call_next) -> Message:
    """Mask the update with Flower's SecAgg+ when the server runs it; plain rounds pass through
    (Flower's secaggplus_mod alone fails on them)."""
    if SECAGGPLUS_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(client_fn=client_fn, mods=[site_errors_mod, secure_aggregation_mod])
