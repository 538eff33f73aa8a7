"""The run configuration: one table of options shared by fl-server, fl-sim and the Flower app.

Flower passes the run configuration to both apps as a flat dict (`context.run_config`) whose
keys and defaults live in pyproject.toml under [tool.flwr.app.config]. This module is the one
place that knows each key's type, range and meaning: the CLIs build their options from it and
both apps validate what they receive with it, so a typo fails on the coordinator's terminal
rather than in a subprocess at every site.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import FedSiloError


@dataclass(frozen=True)
class Option:
    key: str  # run-config key, also the CLI flag (--key)
    type: type
    default: Any
    help: str
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None


RUN_OPTIONS: tuple[Option, ...] = (
    Option("run-dir", str, "", "Directory for the run's outputs (models, reports, metrics)."),
    Option("model", str, "", "Base model: a Hugging Face name or local path; empty = the embedded "
           "all-MiniLM-L6-v2 (works offline)."),
    Option("task", str, "classify", "What the model learns: 'classify' (a label per text; sites hold "
           "text files) or 'ner' (a tag per word, IOB2; sites hold CoNLL files; head-init none, the "
           "DP unit is one sentence).", choices=("classify", "ner")),
    Option("labels", str, "", "Comma-separated label set, in the order of the class ids; every "
           "site maps its labels with it (task ner: the tag set, O first)."),
    Option("rounds", int, 3, "Number of federated rounds.", minimum=1, maximum=10_000),
    Option("min-sites", int, 2, "Sites that must be connected before the first round starts "
           "(waiting at most round-timeout); a round then counts if at least one site returns an "
           "update (SecAgg+: at least secagg-threshold).", minimum=1, maximum=100_000),
    Option("local-epochs", int, 1, "Passes over the site's training split per round.",
           minimum=1, maximum=1000),
    Option("batch-size", int, 64, "Local batch size; under DP the expected size of each "
           "Poisson-sampled batch (DP-SGD learns with large batches).", minimum=1, maximum=65_536),
    Option("learning-rate", float, 0.0, "Local AdamW learning rate; 0 = by trainable set and DP: "
           "LoRA 3e-3 (DP) / 2e-3, head 3e-2 (DP) / 1e-2, full 5e-4 (DP) / 5e-5.", minimum=0.0, maximum=1.0),
    Option("head-learning-rate", float, 0.0, "Learning rate of the classification head; 0 = 3e-2 "
           "under DP (the new head starts near zero, and clipped, noisy steps move it slowly), "
           "else the learning rate.", minimum=0.0, maximum=1.0),
    Option("head-init", str, "stats", "How the classification head starts. 'stats': round 1 is one "
           "release of each site's sufficient statistics of its frozen encoder's normalised embeddings "
           "(Gaussian noise added at the site under DP; SecAgg+ sums them), from which the server solves "
           "a least-squares head; the other rounds train as `trainable` says. 'none': a random head, "
           "every round trains.", choices=("stats", "none")),
    Option("head-epsilon-share", float, 0.9, "head-init stats under DP, runs of more than one round: "
           "the epsilon the statistics release would cost alone, as a share of each site's "
           "target-epsilon; the later rounds' DP-SGD gets what keeps the exact composition of both "
           "at target-epsilon. A one-round run spends it all on the release.", minimum=0.01, maximum=0.99),
    Option("max-length", int, 128, "Texts are truncated to this many tokens (batches are padded "
           "only to their own longest text).", minimum=8, maximum=8192),
    Option("trainable", str, "lora", "What trains and travels: 'lora' (LoRA adapters + "
           "classification head), 'head' (the classification head alone; the encoder stays as "
           "loaded) or 'full' (every weight).", choices=("lora", "head", "full")),
    Option("lora-r", int, 8, "LoRA rank.", minimum=1, maximum=1024),
    Option("lora-targets", str, "query,value", "Comma-separated module names that get LoRA "
           "adapters (BERT attention projections)."),
    Option("eval-fraction", float, 0.2, "Share of each site's records held out for federated "
           "evaluation (split at the site with the seed).", minimum=0.0, maximum=0.9),
    Option("seed", int, 42, "Seed for the train/eval split, initial weights and shuffling.",
           minimum=0, maximum=2**31 - 1),
    Option("text-column", str, "text", "Name of the text column in the site's data file."),
    Option("label-column", str, "label", "Name of the label column in the site's data file."),
    Option("secure-aggregation", bool, True, "Secure aggregation (Flower's SecAgg+): the server "
           "learns only the sum of the sites' updates, unless it colludes with at least secagg-threshold sites."),
    Option("secagg-threshold", int, 2, "SecAgg+: sites whose key shares must survive for a round "
           "to be unmasked; fewer left means the round fails. That many sites together could also unmask "
           "single updates: higher resists more collusion, tolerates fewer dropouts.", minimum=2, maximum=100_000),
    Option("secagg-neighbours", int, 21, "SecAgg+: how many sites (itself included; odd) each site "
           "shares key material with, on a ring shuffled every round; 0 = every sampled site (so is any "
           "number at or above the sites in the round). Bounded, a round's key agreement grows linearly "
           "instead of quadratically with the sites; a round whose surviving sites no longer form one "
           "connected neighbourhood graph is refused.",
           minimum=0, maximum=1023),
    Option("round-timeout", float, 600.0, "Seconds to wait for enough sites to connect before a "
           "round, and (SecAgg+) for the sites at each stage of a round.", minimum=1.0, maximum=86_400.0),
    Option("aggregation", str, "fedavg", "How the server combines updates: 'fedavg' (weighted mean; "
           "the only choice under secure aggregation) or, with --no-secure-aggregation, a robust rule "
           "from Flower: 'trimmed-mean', 'median' or 'krum'.",
           choices=("fedavg", "trimmed-mean", "median", "krum")),
    Option("trim-fraction", float, 0.2, "trimmed-mean: share of updates cut at each end, per value.",
           minimum=0.0, maximum=0.49),
    Option("byzantine-sites", int, 1, "krum: how many sites may be malicious.", minimum=0, maximum=100_000),
    Option("server-optimizer", str, "sgd", "How the server steps from the sites' mean update: 'sgd' "
           "(FedAvg; FedAvgM with server-momentum), 'adam' (FedAdam) or 'yogi' (FedYogi), as in Reddi et "
           "al. 2021. They read only the aggregate: secure aggregation and DP hold as they are.",
           choices=("sgd", "adam", "yogi")),
    Option("server-learning-rate", float, 1.0, "Server step: with sgd the global model moves by this times the "
           "sites' mean update (with server-momentum, times the momentum buffer); 1 = plain FedAvg. With "
           "adam or yogi it is the step per coordinate: give about 1e-2.", minimum=1e-4, maximum=100.0),
    Option("server-tau", float, 1e-3, "Adam / Yogi on the server: the adaptivity tau added to sqrt(v) "
           "(smaller = more adaptive).", minimum=1e-9, maximum=1.0),
    Option("server-momentum", float, 0.0, "Server momentum (FedAvgM): each round's step is the sites' mean "
           "update plus this times the previous step; 0 = plain FedAvg. It reads only the aggregate, so "
           "secure aggregation and the sites' DP guarantees hold as they are.", minimum=0.0, maximum=0.99),
    Option("max-update-norm", float, 0.0, "L2 bound on one site's update (the change it sends); "
           "a site does not send a larger one and the server (plain aggregation) rejects it; "
           "0 = no bound. Non-finite values, wrong shapes and wrong dtypes are always refused.",
           minimum=0.0, maximum=1e9),
    Option("audit-key", str, "", "Key that signs the coordinator's audit log; empty = a key made "
           "in the run directory (fl-server --federation uses the federation's server key)."),
    Option("max-fairness-gap", float, 0.0, "Alert (round line, metrics, report, model card) when the "
           "equalized-odds or demographic-parity difference between the sites' groups exceeds this; "
           "0 = no alert. Needs sites with a group column.", minimum=0.0, maximum=1.0),
    Option("sim-data", str, "", "Simulation only: the data file partitioned over virtual sites."),
    Option("sim-device", str, "auto", "Simulation only: where every virtual site computes (auto, cpu "
           "or cuda: the GPU share Ray gives it with fl-sim --gpus-per-site)."),
    Option("partition", str, "iid", "Simulation only: 'iid' (shuffled), 'dirichlet' (label skew) or "
           "'contiguous' (each site a block of the file in its order: by document where the file keeps a "
           "document's records together, as CoNLL files do).", choices=("iid", "dirichlet", "contiguous")),
    Option("dirichlet-alpha", float, 0.5, "Simulation only: Dirichlet concentration (smaller = "
           "more skewed sites).", minimum=1e-3, maximum=1e6),
)

# A site's own differential-privacy settings. A real site sets them with fl-client --KEY (they
# reach its ClientApp as node config, out of the server's hands); in simulation every virtual
# site takes them from the run configuration as sim-KEY (fl-sim --KEY).
SITE_PRIVACY_OPTIONS: tuple[Option, ...] = (
    Option("dp", bool, True, "Train with DP-SGD (per-example clipping, Gaussian noise, Poisson "
           "sampling). Turn off only with --no-dp; every report then says so."),
    Option("target-epsilon", float, 8.0, "Epsilon this site spends over the run's planned rounds; "
           "the noise multiplier is calibrated for it.", minimum=1e-3, maximum=1e4),
    Option("privacy-budget", float, 8.0, "Total epsilon this site allows on this dataset over all "
           "runs; a round that would exceed it is refused.", minimum=1e-3, maximum=1e4),
    Option("delta", float, 0.0, "Delta of the guarantee; 0 = min(1e-5, 0.1/n) for the site's n "
           "records.", minimum=0.0, maximum=0.1),
    Option("max-grad-norm", float, 1.0, "Per-example gradient clipping bound C.",
           minimum=1e-6, maximum=1e6),
    Option("accountant", str, "prv", "Privacy accountant: 'prv' (tighter) or 'rdp'.",
           choices=("prv", "rdp")),
    Option("redact", bool, True, "Replace personal data (names, e-mails, phone numbers, IBANs, "
           "...) with typed placeholders before training. Turn off only with --no-redact."),
    Option("redact-entities", str, "", "Comma-separated entity types to redact; empty = all "
           "(NAME, EMAIL, PHONE, DATE, ID, ADDRESS, IBAN, CARD, IP, URL, MRN, SSN)."),
)
# A site's fairness settings (common/fairness.py), set the same way: fl-client --KEY, fl-sim sim-KEY.
SITE_FAIRNESS_OPTIONS: tuple[Option, ...] = (
    Option("group-column", str, "", "Column naming each record's group (a protected attribute, a ward, "
           "a region). Never trained on: the site reports confusion counts per group of its evaluation "
           "split, never a group per record. Empty = no group report."),
    Option("min-group-size", int, 10, "Groups with fewer evaluation records are merged into 'other', "
           "and 'other' is left out while it is still smaller: no reported group covers fewer records.",
           minimum=2, maximum=1_000_000),
    Option("fairness-reweight", bool, False, "Mitigation: weight each training record by its (group, "
           "label) cell, min(1, median cell size / its cell's size); under DP-SGD after clipping, so the "
           "guarantee is unchanged. Needs group-column."),
)
RUN_OPTIONS += tuple(
    Option(f"sim-{opt.key}", opt.type, opt.default, f"Simulation only, every virtual site: {opt.help}",
           opt.choices, opt.minimum, opt.maximum) for opt in SITE_PRIVACY_OPTIONS + SITE_FAIRNESS_OPTIONS)
OPTIONS_BY_KEY = {opt.key: opt for opt in RUN_OPTIONS}

# Learning rate by (trainable set, DP at the site): DP-SGD needs a larger one (noisy, clipped
# steps; measured in ../shared/notes/opacus-bert.md and in the tests).
# SST-2, one site's 900 records, epsilon 8 (a probe, one seed): DP-LoRA at 1e-2 for all 0.733,
# adapters 3e-3 with the head at 3e-2 0.775, the head alone at 3e-2 0.778.
DEFAULT_LR = {("lora", False): 2e-3, ("lora", True): 3e-3, ("head", False): 1e-2, ("head", True): 3e-2,
              ("full", False): 5e-5, ("full", True): 5e-4}


def _attr(key: str) -> str:
    return key.replace("-", "_")


@dataclass(frozen=True)
class RunConfig:
    run_dir: str = ""
    model: str = ""
    task: str = "classify"
    labels: tuple[str, ...] = field(default_factory=tuple)
    rounds: int = 3
    min_sites: int = 2
    local_epochs: int = 1
    batch_size: int = 64
    learning_rate: float = 0.0
    head_learning_rate: float = 0.0
    head_init: str = "stats"
    head_epsilon_share: float = 0.9
    max_length: int = 128
    trainable: str = "lora"
    lora_r: int = 8
    lora_targets: tuple[str, ...] = ("query", "value")
    eval_fraction: float = 0.2
    seed: int = 42
    text_column: str = "text"
    label_column: str = "label"
    secure_aggregation: bool = True
    secagg_threshold: int = 2
    secagg_neighbours: int = 21
    round_timeout: float = 600.0
    aggregation: str = "fedavg"
    trim_fraction: float = 0.2
    byzantine_sites: int = 1
    server_optimizer: str = "sgd"
    server_learning_rate: float = 1.0
    server_tau: float = 1e-3
    server_momentum: float = 0.0
    max_update_norm: float = 0.0
    sim_data: str = ""
    sim_device: str = "auto"
    partition: str = "iid"
    dirichlet_alpha: float = 0.5
    sim_dp: bool = True
    sim_target_epsilon: float = 8.0
    sim_privacy_budget: float = 8.0
    sim_delta: float = 0.0
    sim_max_grad_norm: float = 1.0
    sim_accountant: str = "prv"
    sim_redact: bool = True
    sim_redact_entities: str = ""
    sim_group_column: str = ""
    sim_min_group_size: int = 10
    sim_fairness_reweight: bool = False
    max_fairness_gap: float = 0.0
    audit_key: str = ""

    @property
    def stats_round(self) -> int | None:
        """The round in which sites release head statistics instead of training (head-init stats)."""
        return 1 if self.head_init == "stats" else None

    def lr_for(self, dp: bool) -> float:
        return self.learning_rate or DEFAULT_LR[(self.trainable, dp)]

    def head_lr_for(self, dp: bool) -> float:
        # Under DP the head learns at the rate of the head-only mode, whatever else trains.
        return self.head_learning_rate or (DEFAULT_LR[("head", True)] if dp else self.lr_for(dp))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RunConfig":
        """Validate a flat run-config dict (Flower's or a CLI's); unknown keys are errors."""
        unknown = sorted(set(raw) - set(OPTIONS_BY_KEY))
        if unknown:
            raise FedSiloError(f"unknown run option(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for opt in RUN_OPTIONS:
            values[_attr(opt.key)] = check_option(opt, raw.get(opt.key, opt.default))
        values["labels"] = split_list(values["labels"])
        values["lora_targets"] = split_list(values["lora_targets"])
        if len(set(values["labels"])) != len(values["labels"]):
            raise FedSiloError("labels: the label set has duplicates")
        if not values["lora_targets"]:
            raise FedSiloError("lora-targets: give at least one module name")
        if values["secure_aggregation"] and values["min_sites"] < values["secagg_threshold"]:
            raise FedSiloError(f"secure aggregation needs min-sites >= secagg-threshold "
                               f"({values['secagg_threshold']}); got min-sites {values['min_sites']}")
        neighbours = values["secagg_neighbours"]
        if neighbours and (neighbours % 2 == 0 or neighbours <= values["secagg_threshold"]):
            raise FedSiloError(f"secagg-neighbours {neighbours}: give 0 (every site) or an odd number above "
                               f"secagg-threshold ({values['secagg_threshold']}): the site and as many "
                               "neighbours on each side of it")
        if values["secure_aggregation"] and values["aggregation"] != "fedavg":
            raise FedSiloError(f"aggregation {values['aggregation']}: robust rules need the single updates, "
                               "which secure aggregation hides; add --no-secure-aggregation")
        if values["server_optimizer"] != "sgd" and values["server_momentum"]:
            raise FedSiloError(f"server-momentum is for server-optimizer sgd: {values['server_optimizer']} keeps "
                               "its own moments")
        if values["task"] == "ner":
            _check_ner(values)
        return cls(**values)

    def require_labels(self) -> None:
        if len(self.labels) < 2:
            raise FedSiloError("labels: give at least two labels, e.g. --labels negative,positive")

    def to_flat(self) -> dict[str, Any]:
        """The flat run-config dict, as Flower carries it."""
        flat = {}
        for opt in RUN_OPTIONS:
            value = getattr(self, _attr(opt.key))
            flat[opt.key] = ",".join(value) if isinstance(value, tuple) else value
        return flat

    def to_json(self) -> str:
        return json.dumps(self.to_flat(), indent=2, sort_keys=True)


def _check_ner(values: dict[str, Any]) -> None:
    """What task ner does not do (yet): one clear line each."""
    refused = {"head_init": ("stats", "head-init stats solves a sentence classifier's head: use head-init none"),
               "partition": ("dirichlet", "partition dirichlet skews labels per text: use partition iid or contiguous"),
               "sim_group_column": (None, "sim-group-column: fairness by group is for text classification"),
               "sim_fairness_reweight": (True, "sim-fairness-reweight: fairness by group is for text classification"),
               "max_fairness_gap": (None, "max-fairness-gap: fairness by group is for text classification")}
    for key, (bad, why) in refused.items():
        if (values[key] == bad) if bad is not None else bool(values[key]):
            raise FedSiloError(f"task ner: {why}")


def split_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def check_option(opt: Option, value: Any) -> Any:
    if opt.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, opt.type) or isinstance(value, bool) and opt.type is not bool:
        raise FedSiloError(f"{opt.key}: expected {opt.type.__name__}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):  # nan passes every range check
        raise FedSiloError(f"{opt.key}: must be a finite number, got {value}")
    if opt.choices and value not in opt.choices:
        raise FedSiloError(f"{opt.key}: must be one of {', '.join(opt.choices)}, got {value!r}")
    if opt.minimum is not None and value < opt.minimum:
        raise FedSiloError(f"{opt.key}: must be >= {opt.minimum}, got {value}")
    if opt.maximum is not None and value > opt.maximum:
        raise FedSiloError(f"{opt.key}: must be <= {opt.maximum}, got {value}")
    return value


def add_run_options(parser: argparse.ArgumentParser, keys: list[str] | None = None) -> None:
    """Add --KEY options for the given run-config keys (all by default)."""
    group = parser.add_argument_group("run configuration (same names in fl-server, fl-sim and "
                                      "pyproject.toml [tool.flwr.app.config])")
    for opt in RUN_OPTIONS:
        if keys is not None and opt.key not in keys:
            continue
        default = opt.default if opt.default != "" else "(none)"
        if opt.type is bool:  # --key / --no-key
            group.add_argument(f"--{opt.key}", dest=_attr(opt.key), action=argparse.BooleanOptionalAction,
                               default=None, help=f"{opt.help} [default: {'on' if opt.default else 'off'}]")
            continue
        group.add_argument(f"--{opt.key}", dest=_attr(opt.key), type=opt.type, default=None,
                           metavar=opt.type.__name__.upper(), choices=opt.choices or None,
                           help=f"{opt.help} [default: {default}]")


def run_config_from_args(args: argparse.Namespace, **overrides: Any) -> RunConfig:
    """Defaults, then the options the user gave, then the caller's overrides; validated."""
    raw = {opt.key: opt.default for opt in RUN_OPTIONS}
    for opt in RUN_OPTIONS:
        value = getattr(args, _attr(opt.key), None)
        if value is not None:
            raw[opt.key] = value
    raw.update(overrides)
    if raw["task"] == "ner" and getattr(args, "head_init", None) is None and "head-init" not in overrides:
        raw["head-init"] = "none"  # head-init's default, stats, is for sentence classification
    return RunConfig.from_dict(raw)


def write_run_config_toml(cfg: RunConfig, path: Path) -> Path:
    """A TOML file of every key, for `flwr run --run-config FILE` (no shell quoting games)."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in cfg.to_flat().items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def resolved(cfg: RunConfig) -> dict[str, Any]:
    """The config as written into the run directory."""
    return dataclasses.asdict(cfg)
