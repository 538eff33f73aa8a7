"""FedSilo's strategy: FedAvg over the sites' deltas, with every round written down.

Sites send `new - old` of the trainable tensors. FedAvg's weighted average of those deltas
(or, under secure aggregation, the one already-summed result) is added to the global model,
through the server's optimiser (server/server_optimizer.py: FedAvg, FedAvgM, FedAdam, FedYogi).
Without secure aggregation every update is validated first (common/updates.py) and a robust
rule from Flower (trimmed mean, median, Krum) may replace the mean.

Rounds are numbered for the whole run: a run resumed after round N (server/app.py) counts on
from N + 1 while Flower's workflow counts from 1 again, hence `offset`.
After every round the strategy's state goes to RUN_DIR/state.json (the resume checkpoint).
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
from flwr.common import (EvaluateRes, FitRes, Parameters, Scalar, ndarrays_to_parameters,
                         parameters_to_ndarrays)
from flwr.common.logger import log
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.strategy.aggregate import aggregate, aggregate_krum, aggregate_median, aggregate_trimmed_avg
from logging import INFO, WARNING

from common.audit import AuditLog
from common.config import RunConfig
from common.errors import FedSiloError, printable
from common.model import weights_digest
from common.updates import pack, unpack, update_problem
from server.entity_round import EntityCounts, entity_types
from server.fairness_round import GroupCounts
from server.report import report_dict, round_line
from server.head_init import release_shapes, with_solved_head
from server.run_dir import RunDir
from server.secure_aggregation import MAX_SITES_PER_ROUND
from server.server_optimizer import ServerOptimizer
from server.site_reports import (Malformed, claimed, evaluate_report, failure_text, fit_report, privacy_entry,
                                 resumed_privacy)

REFUSALS = ("privacy budget exhausted", "app not approved")
SITE_POLL_S = 0.5  # how often a round that waits for sites asks the SuperLink who is connected


class FedSiloStrategy(FedAvg):
    def __init__(self, cfg: RunConfig, run_dir: RunDir, initial: list[np.ndarray], audit: AuditLog,
                 resumed: dict | None = None):
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=1.0,
            # FedAvg would wait up to a day for these; configure_fit waits round-timeout instead.
            min_fit_clients=1,
            min_evaluate_clients=1,
            min_available_clients=1,
            initial_parameters=ndarrays_to_parameters(pack(initial)),  # packed: common/updates.py
            on_fit_config_fn=lambda rnd: {"server-round": rnd},
            on_evaluate_config_fn=lambda rnd: {"server-round": rnd},
        )
        self.cfg = cfg
        self.run_dir = run_dir
        self.audit = audit
        self.global_weights = [w.copy() for w in initial]
        self.completed_rounds: list[int] = []
        self.failed_rounds: dict[int, str] = {}
        self.site_privacy: dict[str, dict] = {}  # latest privacy report of each site
        self._fit_started: list[int] = []
        self.round_record: dict = {}
        self._round_start = time.monotonic()
        self._sampled: dict[int, set[str]] = {}  # round -> node ids asked to train
        self._unreadable: dict[str, list[str]] = {"train": [], "evaluate": []}  # dropped replies, named
        self.offset = 0
        self.head_prior = None  # head-init stats: the label names' zero-shot head (server/app.py)
        # Who each node is: from enrolment (its authenticated key), never from what it says.
        self.enrolled = run_dir.enrolled_sites()
        if resumed:  # a checkpoint from state.json (server/app.py checked it fits this run)
            self.offset = int(resumed["last_round"])
            self.completed_rounds = [int(r) for r in resumed["completed_rounds"]]
            self.failed_rounds = {int(r): str(v) for r, v in resumed["failed_rounds"].items()}
            # checked like a fresh report: a checkpoint of an older version may hold anything
            self.site_privacy, dropped = resumed_privacy(resumed.get("site_privacy"))
            for what in dropped:
                log(WARNING, "%s: %s", run_dir.state_path, what)
        # The server's step and its buffers (FedAvgM's momentum, FedAdam's / FedYogi's moments),
        # saved with each round's weights; none yet when the last round released head statistics.
        self.optimizer = ServerOptimizer(cfg.server_optimizer, cfg.server_learning_rate, cfg.server_momentum,
                                         cfg.server_tau)
        if resumed and self.optimizer.stateful and self.completed_rounds and max(self.completed_rounds) != cfg.stats_round:
            last = max(self.completed_rounds)
            self.optimizer.load(run_dir.load_round_weights(last, kind=self.optimizer.file_kind), self.shapes,
                                f"{run_dir.path}/rounds/{self.optimizer.file_kind}-{last:04d}.npz")

    def site_name(self, proxy: ClientProxy, metrics: dict) -> str:
        """The name reports use for the node behind `proxy`. With enrolment (fl-server
        --federation) it is the name the node's key was enrolled under, whatever the site says;
        a node the SuperLink let in but that is not in the map is named by its id. Without
        enrolment (simulation, where the coordinator plays every site; --insecure on loopback)
        it is the name the site gives (`names_source` says so in the summary)."""
        node = str(proxy.node_id)
        claimed = printable(str(metrics.get("site", "")))
        if self.enrolled is None:
            return claimed or f"node {node}"
        name = self.enrolled.get(node, f"node {node} (not enrolled)")
        if claimed and claimed != name:
            log(WARNING, "node %s, enrolled as %s, calls itself %r: reported as %s", node, name, claimed, name)
        return name

    @property
    def names_source(self) -> str:
        if self.enrolled is not None:
            return "enrolment (each node's authenticated key)"
        return "the sites' own word (simulation)" if self.cfg.sim_data else \
            "the sites' own word (--insecure: no enrolment, nothing authenticated)"

    def checkpoint(self, last_round: int) -> None:
        """Rounds up to `last_round` are closed: their global weights are in rounds/ already."""
        self.run_dir.save_state({
            "config": self.cfg.to_flat(), "last_round": last_round,
            "completed_rounds": self.completed_rounds,
            "failed_rounds": {str(k): v for k, v in self.failed_rounds.items()},
            "site_privacy": self.site_privacy})

    # ------------------------------------------------------------------ training
    def configure_fit(self, server_round, parameters, client_manager):
        first = server_round == 1  # of this process: after a (re)start wait for min-sites again
        server_round += self.offset
        self.close_rounds()
        self._round_start = time.monotonic()
        self.round_record = {"round": server_round}
        self._fit_started.append(server_round)
        needed = self.cfg.min_sites if first else 1
        if self.cfg.secure_aggregation:
            needed = max(needed, self.cfg.secagg_threshold)
        if not self._wait_for_sites(client_manager, needed):
            self.fail_round(server_round, f"only {client_manager.num_available()} of {needed} sites "
                                          f"connected after {self.cfg.round_timeout:.0f}s (round-timeout)")
            return []
        instructions = super().configure_fit(server_round, parameters, client_manager)
        if self.cfg.secure_aggregation and len(instructions) > MAX_SITES_PER_ROUND:
            self.refuse_round(f"secure aggregation refused: {len(instructions)} sites in one round, more than the "
                              f"{MAX_SITES_PER_ROUND} whose quantised updates sum without overflow")
            return []
        self._sampled[server_round] = {str(proxy.node_id) for proxy, _ in instructions}
        return instructions

    def _wait_for_sites(self, client_manager, needed: int) -> bool:
        """Whether `needed` sites are connected, waiting at most round-timeout. Flower's compat
        client manager learns of connected sites every 5 s, and its wait_for waits for that
        (measured: 5.3 s at the start of every run); num_available asks the SuperLink now."""
        deadline = time.monotonic() + self.cfg.round_timeout
        while client_manager.num_available() < needed:
            if time.monotonic() >= deadline:
                return False
            time.sleep(SITE_POLL_S)
        return True

    def configure_evaluate(self, server_round, parameters, client_manager):
        return super().configure_evaluate(server_round + self.offset, parameters, client_manager)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """What a packed update is cut into: the global model's trainable tensors."""
        return [w.shape for w in self.global_weights]

    def fail_round(self, rnd: int, reason: str) -> None:
        self.failed_rounds[rnd] = reason
        log(WARNING, "round %d failed: %s", rnd, reason)

    def refuse_round(self, reason: str) -> None:
        """Secure aggregation refused this round (too many sites, or survivors that fell apart)."""
        self.fail_round(self._fit_started[-1], f"{reason}; the global model is unchanged")

    def close_rounds(self) -> None:
        """A round that started but never reached aggregate_fit failed: Flower's SecAgg+ halts
        silently (and exits 0) when too few sites remain to unmask the sum."""
        for rnd in self._fit_started:
            if rnd not in self.completed_rounds and rnd not in self.failed_rounds:
                self.fail_round(rnd, f"secure aggregation halted: fewer than secagg-threshold="
                                     f"{self.cfg.secagg_threshold} sites remained; the global model is unchanged")
    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures) -> tuple[Parameters | None, dict[str, Scalar]]:
        server_round += self.offset
        replied = {str(proxy.node_id) for proxy, _ in results}
        replied |= {str(f[0].node_id) for f in failures if not isinstance(f, BaseException)}
        failure_texts = [failure_text(f) for f in failures] + self._take_unreadable("train")
        silent = len(self._sampled.get(server_round, ())) - len(replied) - sum(
            isinstance(f, BaseException) for f in failures)
        if silent > 0 and not self.cfg.secure_aggregation:
            failure_texts.append(f"{silent} site(s) sent no update within round-timeout "
                                 f"({self.cfg.round_timeout:.0f}s)")
        reports = self._check_reports(server_round, results, failure_texts)
        if self.cfg.secure_aggregation:  # the one result is already the sum: no site to judge
            try:  # a site with a malformed report is inside the sum all the same
                accepted = [(proxy, res, unpack(parameters_to_ndarrays(res.parameters), self._shapes(server_round)))
                            for proxy, res in results]
            except FedSiloError as err:
                self.fail_round(server_round, f"aggregate refused: {err}")
                return None, {}
        else:  # a site with a malformed report is left out, its update too
            accepted, rejected = self._validate([(p, r) for p, r in results if id(r) in reports], server_round)
            failure_texts += rejected
        sites = {self.site_name(proxy, reports[id(res)]): (res, reports[id(res)])
                 for proxy, res, _ in accepted if id(res) in reports}
        self.round_record["fit"] = {
            name: {"examples": res.num_examples, **{k: v for k, v in clean.items() if k != "site"}}
            for name, (res, clean) in sites.items()
        }
        for name, (_res, clean) in sites.items():
            self.site_privacy[name] = privacy_entry(clean)
        # Flower's SecAgg+ workflow reports some failures twice
        self.round_record["fit_failures"] = failure_texts = list(dict.fromkeys(failure_texts))
        for text in failure_texts:
            log(WARNING, "round %d: a site failed: %s", server_round, text)
        if not accepted:  # sites that refused (budget) or failed are left out; one answer suffices
            reason = "no site returned a valid update"
            self.failed_rounds[server_round] = reason
            log(WARNING, "round %d failed (%s); the global model is unchanged", server_round, reason)
            return None, {}
        if self.cfg.secure_aggregation:  # every result carries the same revealed (weighted) mean
            deltas = accepted[0][2]
        else:
            deltas = self._combine([(update, res.num_examples) for _, res, update in accepted])
        problem = update_problem(deltas, self._reference(server_round), check_dtype=False)
        if problem:  # a SecAgg+ sum is checked too: a site's garbage is caught here, if not by name
            self.failed_rounds[server_round] = f"aggregate refused: {problem}"
            log(WARNING, "round %d failed (%s); the global model is unchanged", server_round, problem)
            return None, {}
        if server_round == self.cfg.stats_round:  # the head, solved from the mean statistics
            self.global_weights, ridge = with_solved_head(self.global_weights, deltas,
                                                          [clean for _res, clean in sites.values()], self.head_prior)
            self.round_record["head_from_statistics"] = {"ridge": ridge}
        else:
            step = self.optimizer.step(deltas)
            self.global_weights = [w + d.astype(w.dtype) for w, d in zip(self.global_weights, step)]
        if self.optimizer.state():  # before the weights: a resume needs both of a completed round
            self.run_dir.save_round_weights(server_round, self.optimizer.state(), kind=self.optimizer.file_kind)
        self.run_dir.save_round_weights(server_round, self.global_weights)
        self.completed_rounds.append(server_round)
        return ndarrays_to_parameters(pack(self.global_weights)), {}

    def _check_reports(self, server_round: int, results, failure_texts: list[str]) -> dict[int, dict]:
        """id(result) -> its checked metrics (server/site_reports.py), for each fit reply whose
        report is well-formed; each malformed one is named in `failure_texts` and audited."""
        reports = {}
        for proxy, res in results:
            try:
                reports[id(res)] = fit_report(res.metrics, res.num_examples)
            except Malformed as bad:  # under SecAgg+ the update cannot be taken out of the sum
                fate = ("report dropped, update inside the secure sum" if self.cfg.secure_aggregation
                        else "report and update left out")
                failure_texts.append(self._malformed(server_round, proxy, res, "fit", bad, fate))
        return reports

    def _malformed(self, server_round: int, proxy, res, stage: str, bad: Malformed, outcome: str) -> str:
        """The round line's text for a malformed report, after its audit record."""
        name = self.site_name(proxy, claimed(getattr(res, "metrics", None)))
        self.audit.append("malformed_report", {"round": server_round, "stage": stage, "site": name,
                                               "field": bad.field, "reason": bad.reason, "outcome": outcome})
        text = f"site {name}: malformed report ({bad})"
        return text + "; its update is inside the secure sum" if "secure sum" in outcome else text

    def unreadable_reply(self, node_id: int, kind: str, problem: str) -> None:
        """server/app.py dropped a site's reply that Flower could not read (server/site_reports.py
        unreadable_reply); it is named in the round's failures and audited."""
        server_round = (self._fit_started or [self.offset])[-1]
        proxy = SimpleNamespace(node_id=node_id)
        text = self._malformed(server_round, proxy, None, kind, Malformed("reply", problem), "reply left out")
        self._unreadable.setdefault(kind, []).append(text)

    def _take_unreadable(self, kind: str) -> list[str]:
        taken, self._unreadable[kind] = self._unreadable.get(kind, []), []
        return taken

    def _shapes(self, server_round: int) -> list[tuple[int, ...]]:
        """What a site's reply is cut into: head statistics in the statistics round, else the
        global model's trainable tensors."""
        return release_shapes(self.global_weights) if server_round == self.cfg.stats_round else self.shapes

    def _reference(self, server_round: int) -> list[np.ndarray]:
        """What a reply is checked against (shapes, dtypes) in `server_round`."""
        if server_round != self.cfg.stats_round:
            return self.global_weights
        return [np.zeros(shape, dtype=np.float32) for shape in self._shapes(server_round)]

    def _validate(self, results, server_round: int):
        """(proxy, result, decoded update) of each update that passes common/updates.py; the
        senders of the others named. Statistics have no norm bound: their values are checked."""
        kept, rejected = [], []
        max_norm = 0.0 if server_round == self.cfg.stats_round else self.cfg.max_update_norm
        for proxy, res in results:
            name = self.site_name(proxy, claimed(res.metrics))
            try:
                update = unpack(parameters_to_ndarrays(res.parameters), self._shapes(server_round))
            except FedSiloError as err:
                problem = f"malformed: {err}"
            except Exception as err:  # noqa: BLE001 - whatever a site's bytes make numpy raise
                problem = f"malformed ({type(err).__name__})"
            else:
                problem = update_problem(update, self._reference(server_round), max_norm)
            if problem:
                rejected.append(f"site {name}: update rejected: {problem}")
                self.round_record.setdefault("rejected", {})[name] = problem
            else:
                kept.append((proxy, res, update))
        return kept, rejected

    def _combine(self, updates: list[tuple[list[np.ndarray], int]]) -> list[np.ndarray]:
        """The weighted mean (or robust) delta of the sites' decoded deltas, by Flower's rules."""
        rule = self.cfg.aggregation
        if rule == "fedavg":
            return aggregate(updates)
        if rule == "median":
            return aggregate_median(updates)
        if rule == "trimmed-mean":
            return aggregate_trimmed_avg(updates, self.cfg.trim_fraction)
        return aggregate_krum(updates, self.cfg.byzantine_sites, 0)

    def _audit_round(self, server_round: int, record: dict) -> None:
        fit = record.get("fit", {})
        self.audit.append("round", {
            "round": server_round, "status": record["status"], "participants": sorted(fit),
            "epsilon": {n: f["epsilon"] for n, f in fit.items() if f.get("dp")},
            "no_dp": sorted(n for n, f in fit.items() if not f.get("dp")),
            "aggregate": weights_digest(self.global_weights) if server_round in self.completed_rounds else None,
            "failures": sorted(set(record.get("fit_failures", []))),
            "failed_reason": self.failed_rounds.get(server_round)})
        for reason in sorted(set(record.get("fit_failures", []))):
            if any(key in reason for key in REFUSALS):
                self.audit.append("refusal", {"round": server_round, "reason": reason})

    # ---------------------------------------------------------------- evaluation
    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures) -> tuple[float | None, dict[str, Scalar]]:
        server_round += self.offset
        k = len(self.cfg.labels)
        total = np.zeros((k, k), dtype=np.int64)
        per_site: dict[str, np.ndarray] = {}
        timings: dict[str, dict[str, float]] = {}  # seconds each site spent, by step
        used, malformed, groups = [], [], GroupCounts()  # checked replies (server/site_reports.py), the others
        entities, types = EntityCounts(), entity_types(self.cfg.labels) if self.cfg.task == "ner" else ()
        for proxy, res in results:
            try:
                clean, confusion = evaluate_report(res.metrics, res.num_examples, res.loss, k, types)
            except Malformed as bad:
                malformed.append(self._malformed(server_round, proxy, res, "evaluate", bad, "report left out"))
                continue
            used.append(res)
            if confusion is None:  # the site holds out no records
                continue
            name = self.site_name(proxy, clean)
            per_site[name] = confusion
            total += confusion
            groups.add(name, clean)
            entities.add(name, clean)
            timings[name] = {key: v for key, v in clean.items() if key.startswith("time_")}
        for text in malformed:
            log(WARNING, "round %d: a site failed: %s", server_round, text)
        overall = report_dict(total, self.cfg.labels)
        sites = {name: report_dict(c, self.cfg.labels) for name, c in sorted(per_site.items())}
        self.close_rounds()
        record = self.round_record if self.round_record.get("round") == server_round else {"round": server_round}
        record.update({
            "accuracy": overall["accuracy"],
            "macro_f1": overall["macro avg"]["f1-score"],
            "eval_examples": int(total.sum()),
            "site_accuracy": {name: rep["accuracy"] for name, rep in sites.items()},
            "eval_failures": list(dict.fromkeys([failure_text(f) for f in failures] + malformed
                                                + self._take_unreadable("evaluate"))),
            "evaluate": timings,
            "seconds": round(time.monotonic() - self._round_start, 2),
            "status": "failed" if server_round in self.failed_rounds else "ok",
            "failed_reason": self.failed_rounds.get(server_round),
            **groups.record(self.cfg.labels, self.cfg.max_fairness_gap), **entities.record(),
        })
        self.run_dir.save_round_report(server_round, total, per_site, self.cfg.labels, record)
        self._audit_round(server_round, record)
        self.checkpoint(server_round)
        log(INFO, "%s", round_line(record, self.cfg.rounds))
        loss = (sum(r.loss * r.num_examples for r in used) / max(1, sum(r.num_examples for r in used))
                if used else None)
        return loss, {"accuracy": overall["accuracy"]}

