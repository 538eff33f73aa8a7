"""One round at a site: the work behind the ClientApp, kept where it can be reused.

receive global trainable weights -> train on local records (DP-SGD unless the site turned it
off, after charging its own privacy ledger) -> return the delta (never the data).

A `SiteRound` holds what does not change during a run: the site's redacted records, the
tokenizer, the model and the tokenised splits. `serve()` keeps the last one, so a process that
answers many messages (fl-client's site worker, a simulation actor) loads and tokenises once
per run instead of once per message. The tokenizer and model depend on the run only, so
`serve()` keeps them apart from the site: a simulation actor that serves many virtual sites in
turn loads them once per run, not once per site (each message sets the trainable weights it
was sent before using the model, and the frozen ones never change).

A real site first holds each message to its own caps (client/site_limits.py): the run's model on
its --allow-model list, its rounds, epochs, batch size, text length and labels within the site's
limits, and at most the run's rounds fits per run. Errors that would quote the site's data, paths
or files reach the server as one generic line; the detail stays on the site's console.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import replace

import numpy as np

from client.ledger import BudgetExhausted, PrivacyLedger, fingerprint
from client import head_release
from client.private_train import DPStepPlan, train_dp
from client.site import device_spec, site_data
from client.site_limits import FitCounter, SiteRefusal, applies, check_fit_count, check_run
from client.ner_eval import evaluate_tagger
from client.train import evaluate_local, train_local
from common import device as devices
from common.audit import AuditLog, generate_key
from common.batching import encode
from common.config import RunConfig
from common.data import LocalDetailError, print_local_detail
from common.errors import FedSiloError
from common.fairness import balancing_weights, group_confusions
from common.model import build_model, get_weights, load_tokenizer, set_weights, weights_digest
from common.ner_data import as_sentences
from common.privacy import DP_SGD, MECHANISM_KEYS, RELEASE, plan_run
from common.token_model import build_tagger, encode_sentences
from common.updates import pack, unpack, update_problem


class RunModel:
    """The run's config, tokenizer and model: the same for every site of the run."""

    def __init__(self, run_config: dict, site: str | None = None, device: str = "auto"):
        """site: the real site loading it, whose console alone learns why a model did not load;
        device: the site's own --device (common/device.py)."""
        started = time.perf_counter()
        self.cfg = RunConfig.from_dict(dict(run_config))
        self.cfg.require_labels()
        self.device = devices.resolve(device)
        try:
            self.tokenizer = load_tokenizer(self.cfg.model)
            model = build_tagger(self.cfg, self.cfg.labels) if self.cfg.task == "ner" else build_model(self.cfg)
            self.model = model.to(self.device)
        except FedSiloError as err:
            if site is None:
                raise
            # What loading found at the site's path (one allowed by --allow-model) stays on its console.
            raise LocalDetailError(f"site {site} cannot load the run's model", str(err)) from None
        self._unreported = time.perf_counter() - started  # the first site served reports it

    def take_load_seconds(self) -> float:
        seconds, self._unreported = self._unreported, 0.0
        return seconds


class SiteRound:
    def __init__(self, run_id: str, node_config: dict, run_model: RunModel):
        started = time.perf_counter()
        self.cfg = run_model.cfg  # the run's config, parsed once with its model
        self.site = site_data(self.cfg, dict(node_config))
        self.tokenizer, self.model = run_model.tokenizer, run_model.model
        self.model_device = run_model.device
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.run_id = str(run_id)
        self.limited = applies(node_config)  # a real site: it trains at most the run's rounds times
        loaded = time.perf_counter()
        self.train_data = self._encode(self.site.train, self.site.train_labels)
        if self.site.fairness.fairness_reweight:  # the mitigation: weights by (group, label) cell
            self.train_data = replace(self.train_data,
                                      weights=balancing_weights(self.site.train_labels, self.site.train.groups))
        self.eval_data = self._encode(self.site.eval, self.site.eval_labels)
        # Paid by the first message of a run only; reported so a slow round can be explained.
        self.pending = {"time_load": loaded - started + run_model.take_load_seconds(),
                        "time_tokenise": time.perf_counter() - loaded}

    def _encode(self, records, labels):
        if self.cfg.task == "ner":  # words (a sentence's tokens) and their tag ids
            return encode_sentences(self.tokenizer, as_sentences(records).tokens, list(labels), self.cfg.max_length)
        return encode(self.tokenizer, records.texts, self.cfg.max_length, labels)

    def _setup_seconds(self) -> dict[str, float]:
        spent, self.pending = self.pending, {"time_load": 0.0, "time_tokenise": 0.0}
        return {k: round(v, 3) for k, v in spent.items()}

    def _memory(self) -> dict:
        """Where the round ran and its peak memory, next to its timings in the site's report."""
        where = {"device": self.model_device.type, **devices.peak_memory(self.model_device)}
        if not self.limited and (node := devices.ray_node()):  # a virtual site: which cluster node served it
            where["ray_node"] = node
        return where

    def audit(self, kind: str, data: dict) -> None:
        """Append to the site's own signed audit trail (kept next to its data, never sent)."""
        try:
            if not self.site.audit_key.exists():
                generate_key(self.site.audit_key)  # plaintext/simulation sites have no kit key
            AuditLog(self.site.audit_log, self.site.audit_key, f"site {self.site.name}").append(
                kind, {"run_id": self.run_id, **data})
        except FedSiloError as err:  # its paths stay on the site's console
            raise LocalDetailError(f"site {self.site.name}: its audit log cannot be written", str(err)) from None

    def received(self, packed: list[np.ndarray]) -> list[np.ndarray]:
        """The global weights a message carries, cut into this model's trainable tensors."""
        shapes = [tuple(p.shape) for p in self.model.parameters() if p.requires_grad]
        try:
            return unpack(packed, shapes)
        except FedSiloError as err:
            raise FedSiloError(f"site {self.site.name}: the server's model does not fit this run's: {err}") from None

    def fit(self, packed: list[np.ndarray], config: dict):
        parameters = self.received(packed)
        server_round = int(config.get("server-round", 0))
        try:
            return self._fit(parameters, server_round)
        except (BudgetExhausted, SiteRefusal) as err:
            self.audit("refusal", {"round": server_round, "reason": str(err)})
            raise

    def _fit(self, parameters, server_round: int):
        self._ledger_anchor = None
        set_weights(self.model, parameters)
        data = self.train_data
        desc = f"site {self.site.name} round {server_round}"
        started = time.perf_counter()
        devices.reset_peak(self.model_device)
        if server_round == self.cfg.stats_round:  # head-init stats: release, do not train
            return self._release_head_stats(parameters, server_round, desc)
        if self.site.privacy.dp:  # noise and sampling from the site's CSPRNG, never from the run's seed
            stats, report = self._train_private(data, server_round, desc)
        else:  # no DP to protect: shuffling may follow the run's seed, for reproducible runs
            if self.limited:
                FitCounter(self.site.fit_counts, self.site.name).charge(self.run_id, self.cfg.rounds)
            stats = train_local(self.model, data, self.cfg, self.pad_id, seed=self.cfg.seed * 100_003 + server_round,
                                desc=desc)
            # Without DP the site says so in every report it sends.
            report = {"dp": False, "train_loss": stats["train_loss"]}
        seconds = {**self._setup_seconds(), "time_train": round(time.perf_counter() - started, 3),
                   **self._memory()}
        # Send the change, not the weights: secure aggregation clips what it is given,
        # and deltas are small and centred on zero.
        delta = [new - old for new, old in zip(get_weights(self.model), parameters)]
        problem = update_problem(delta, parameters, self.cfg.max_update_norm)
        if problem:  # e.g. training diverged: say so rather than send it (the server would refuse it)
            self.audit("update_withheld", {"round": server_round, "reason": problem})
            raise FedSiloError(f"site {self.site.name}: update not sent: {problem}")
        print(f"{desc}: trained on {len(data)} records in {seconds['time_train']:.1f} s, mean loss "
              f"{stats['train_loss']:.4f}"
              + (f", epsilon spent {report['epsilon']:.3f}" if report["dp"] else ", NO differential privacy"),
              flush=True)
        redactions = dict(self.site.redactions)
        self.audit("round", {"round": server_round, "data_fingerprint": fingerprint(self.site.records),
                             "received": weights_digest(parameters),
                             "sent": weights_digest(delta), "redactions": redactions,
                             **({"ledger": self._ledger_anchor} if self._ledger_anchor else {}),
                             **{k: report[k] for k in ("dp", "epsilon", "delta", "accountant") if k in report}})
        # records: what DP protects (the training split); eval_records: held out, not DP-protected
        return pack(delta), len(data), {"site": self.site.name, "records": len(self.site.train),
                                        "eval_records": len(self.site.eval),
                                  "redactions": json.dumps(redactions, sort_keys=True), **report, **seconds}

    def _release_head_stats(self, parameters, server_round: int, desc: str):
        """Round 1 of head-init stats: charge the ledger for one Gaussian release (under DP), then
        send the noisy statistics of the frozen embeddings (client/head_release.py)."""
        started = time.perf_counter()
        report: dict = {"dp": False}
        noise = None
        if self.site.privacy.dp:
            plan, report = self._charge(server_round, release=True)
            noise = plan.release_noise
        elif self.limited:
            FitCounter(self.site.fit_counts, self.site.name).charge(self.run_id, self.cfg.rounds)
        sent = head_release.release(self.model, self.train_data, len(self.cfg.labels), self.pad_id, noise)
        seconds = {**self._setup_seconds(), "time_train": round(time.perf_counter() - started, 3),
                   **self._memory()}
        print(f"{desc}: released head statistics of {len(self.train_data)} records in {seconds['time_train']:.1f} s"
              + (f", epsilon spent {report['epsilon']:.3f}" if report["dp"] else ", NO differential privacy"),
              flush=True)
        self.audit("round", {"round": server_round, "release": "head statistics",
                             "data_fingerprint": fingerprint(self.site.records),
                             "received": weights_digest(parameters), "sent": weights_digest(sent),
                             "redactions": dict(self.site.redactions),
                             **({"ledger": self._ledger_anchor} if self._ledger_anchor else {}),
                             **{k: report[k] for k in ("dp", "epsilon", "delta", "accountant") if k in report}})
        return pack(sent), len(self.train_data), {
            "site": self.site.name, "records": len(self.site.train), "eval_records": len(self.site.eval),
            "redactions": json.dumps(dict(self.site.redactions), sort_keys=True), **report, **seconds}

    def _train_private(self, data, server_round: int, desc: str):
        """Charge the ledger first (refusing past the budget), then run DP-SGD."""
        plan, report = self._charge(server_round, release=False)
        dp_plan = DPStepPlan(noise_multiplier=plan.sgd_noise, sample_rate=plan.sample_rate, steps=plan.steps,
                             max_grad_norm=self.site.privacy.max_grad_norm)
        stats = train_dp(self.model, data, self.cfg.lr_for(dp=True), dp_plan, self.pad_id,
                         ghost=self.cfg.trainable == "full", desc=desc, head_lr=self.cfg.head_lr_for(dp=True))
        return stats, report

    def _charge(self, server_round: int, release: bool):
        """The run's privacy plan (common/privacy.plan_run) and this round's charge on the ledger,
        refused past the budget; returns (plan, the round's privacy report)."""
        privacy, n = self.site.privacy, len(self.train_data)
        if not self.site.audit_key.exists():
            generate_key(self.site.audit_key)  # the ledger is signed with the site's key
        try:
            ledger = PrivacyLedger(self.site.ledger_path, fingerprint(self.site.records), len(self.site.records),
                                   privacy.delta_for(len(self.site.records)) if privacy.delta else None,
                                   privacy.accountant, signing_key=self.site.audit_key,
                                   audit_log=self.site.audit_log, records=self.site.records)
        except FedSiloError as err:  # the ledger's path and state stay on the site's console
            raise LocalDetailError(f"site {self.site.name}: its privacy ledger refuses the round", str(err)) from None
        if self.limited:  # the run's charges on the ledger are the fits it trained
            check_fit_count(self.site.name, self.run_id, sum(e["run_id"] == self.run_id for e in ledger.entries),
                            self.cfg.rounds)
        delta = ledger.delta  # the ledger's own delta while it stays below 1/n (client/ledger.py)
        for note in ledger.notes:
            print(f"site {self.site.name}: privacy ledger: {note}", flush=True)
        plan = plan_run(privacy.target_epsilon, delta, privacy.accountant, n, self.cfg.batch_size,
                        self.cfg.local_epochs, self.cfg.rounds, self.cfg.stats_round is not None,
                        self.cfg.head_epsilon_share)
        sigma, q, steps = (plan.release_noise, 1.0, 1) if release else (plan.sgd_noise, plan.sample_rate, plan.steps)
        try:
            epsilon = ledger.charge(site=self.site.name, run_id=self.run_id, server_round=server_round,
                                    noise_multiplier=sigma, sample_rate=q, steps=steps,
                                    budget=privacy.privacy_budget, mechanism=RELEASE if release else DP_SGD)
        except BudgetExhausted:
            raise
        except FedSiloError as err:
            raise LocalDetailError(f"site {self.site.name}: its privacy ledger refuses the round", str(err)) from None
        self._ledger_anchor = ledger.anchor  # the round's audit record pins the ledger's length and head
        # Only privacy bookkeeping travels: the training loss is not DP-protected, so it stays here.
        shares = {MECHANISM_KEYS[m["mechanism"]]: round(m["epsilon_alone"], 4)
                  for m in plan.shares(delta, privacy.accountant)}
        return plan, {"dp": True, "epsilon": epsilon, "delta": delta, "budget": privacy.privacy_budget,
                      "accountant": privacy.accountant, "noise_multiplier": sigma, "sample_rate": q,
                      "steps": steps, "mechanisms": json.dumps(shares, sort_keys=True)}

    def evaluate(self, packed: list[np.ndarray], config: dict):
        set_weights(self.model, self.received(packed))
        data = self.eval_data
        if len(data) == 0:
            return 0.0, 0, {"site": self.site.name}
        if self.limited:  # the server picks the model evaluated: at most one evaluation per planned round
            FitCounter(self.site.fit_counts, self.site.name, "evaluation").charge(self.run_id, self.cfg.rounds)
        started = time.perf_counter()
        if self.cfg.task == "ner":  # counts over words and entities (client/ner_eval.py)
            loss, confusion, entities = evaluate_tagger(self.model, data, list(self.site.eval_labels), self.cfg.labels,
                                                        self.pad_id)
            return loss, int(confusion.sum()), {"site": self.site.name, "confusion": json.dumps(confusion.tolist()),
                                                "entity_counts": json.dumps(entities, sort_keys=True),
                                                **self._setup_seconds(),
                                                "time_evaluate": round(time.perf_counter() - started, 3)}
        loss, confusion, predicted = evaluate_local(self.model, data, self.pad_id, len(self.cfg.labels), True)
        # Aggregate counts only: the confusion matrix of the site's eval split and, with a group
        # column, one per group of at least min-group-size records (common/fairness.py).
        by_group = {}
        if self.site.eval.groups is not None:
            counts = group_confusions(self.site.eval_labels, predicted, self.site.eval.groups, len(self.cfg.labels),
                                      self.site.fairness.min_group_size)
            by_group = {"group_confusion": json.dumps({g: m.tolist() for g, m in counts.items()}, sort_keys=True)}
        return loss, len(data), {"site": self.site.name, "confusion": json.dumps(confusion.tolist()), **by_group,
                                 **self._setup_seconds(),
                                 "time_evaluate": round(time.perf_counter() - started, 3)}


_run: tuple[tuple, RunModel] | None = None  # the run last served, with its tokenizer and model
_current: tuple[tuple, SiteRound] | None = None  # the run and site last served, with its state


def serve(request: dict):
    """Answer one task {"op": "fit"|"evaluate", "run_id", "run_config", "node_config",
    "parameters", "config"} with the result NumPyClient's fit/evaluate return."""
    global _run, _current
    check_run(request["run_config"], request["node_config"])  # the site's caps, before anything is loaded
    device = device_spec(request["run_config"], request["node_config"])
    run_key = (str(request["run_id"]), json.dumps(request["run_config"], sort_keys=True, default=str), device)
    key = (*run_key, json.dumps(request["node_config"], sort_keys=True, default=str))
    if _current is None or _current[0] != key:
        _current = None
        if _run is None or _run[0] != run_key:
            _run = None  # free the previous run's model before building the next
            node = request["node_config"]
            _run = (run_key, RunModel(request["run_config"], str(node.get("site", "site")) if applies(node) else None,
                                      device))
        _current = (key, SiteRound(request["run_id"], request["node_config"], _run[1]))
    site = _current[1]
    if request["op"] == "fit":
        return site.fit(request["parameters"], request["config"])
    if request["op"] == "evaluate":
        return site.evaluate(request["parameters"], request["config"])
    raise FedSiloError(f"unknown site task {request['op']!r}")


def serve_reply(request: dict) -> tuple:
    """serve() for a process boundary: ("ok", result) or ("error", one-line message) for what the
    site's operator can fix, ("crash", text) for a bug (its traceback goes to the site's console).
    An error's local detail is printed here, on the site's console, and does not cross."""
    try:
        return ("ok", serve(request))
    except FedSiloError as err:
        print_local_detail(err)
        return ("error", str(err))
    except Exception as err:  # noqa: BLE001 - the worker must outlive one bad task
        traceback.print_exc()
        return ("crash", type(err).__name__)  # its text may quote the site's data: it stays in the traceback

