"""Who this site is, which of its records it trains and evaluates on, and its own settings.

One ClientApp serves both engines: in deployment the SuperNode's node config names the site,
its data file and the site's own privacy settings (from fl-client); in simulation Flower hands
out partition ids, the site takes its share of the run's `sim-data` file and the sim-* settings.
Personal data is redacted here, before anything is tokenised.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.ledger import default_ledger_path, fingerprint
from common.config import RunConfig
from common.data import LocalDetailError, Records, encode_labels, partition, read_records, split_train_eval
from common.errors import FedSiloError
from common.fairness import SiteFairness
from common.ner_data import encode_tags, read_sentence_records, redact_records
from common.privacy import SitePrivacy
from common.redaction import ENTITY_TYPES, Redactor


DEFAULT_SITE_EVAL_FRACTION = 0.2  # fl-client --eval-fraction: the most a site holds out for evaluation


@dataclass(frozen=True)
class SiteData:
    name: str
    records: Records  # everything the site holds, as read: what its privacy ledger is bound to
    privacy: SitePrivacy  # the site's own DP and redaction settings
    fairness: SiteFairness  # its group column, smallest reported group, mitigation
    ledger_path: Path
    audit_log: Path  # the site's signed audit trail
    audit_key: Path
    fit_counts: Path  # fits trained per run, for a site without DP (client/site_limits.py)
    redactions: Counter  # placeholders inserted, by type (counts only, never values)
    train: Records
    train_labels: np.ndarray
    eval: Records
    eval_labels: np.ndarray


def site_data(cfg: RunConfig, node_config: dict) -> SiteData:
    text_col = str(node_config.get("text-column", cfg.text_column))
    label_col = str(node_config.get("label-column", cfg.label_column))
    if "data-path" in node_config:
        name = str(node_config.get("site", "site"))
        data_path = Path(str(node_config["data-path"]))
        fairness = SiteFairness.from_mapping(node_config)  # the site's, like its privacy settings
        try:
            records = _reader(cfg)(data_path, text_col, label_col, fairness.group_column)
        except FedSiloError as err:  # its path, lines and column names stay on the site's console
            raise LocalDetailError(f"site {name}: its data file cannot be read", str(err)) from None
        # Deployment: privacy settings come from fl-client, never from the server's run config.
        privacy = SitePrivacy.from_mapping(node_config)
        ledger = Path(str(node_config.get("ledger") or default_ledger_path(data_path)))
        audit_log = Path(str(node_config.get("audit-log") or data_path.with_name(data_path.name + ".audit.jsonl")))
        audit_key = Path(str(node_config.get("audit-key") or data_path.with_name(data_path.name + ".audit-key")))
        fit_counts = data_path.with_name(data_path.name + ".fits.json")
    elif "partition-id" in node_config:
        if not cfg.sim_data:
            raise FedSiloError("simulation needs the run option sim-data (the file to partition)")
        pid, parts = int(node_config["partition-id"]), int(node_config["num-partitions"])
        name = f"sim-{pid}"
        stat = Path(cfg.sim_data).stat() if Path(cfg.sim_data).exists() else None
        fairness = SiteFairness.from_mapping(cfg.to_flat(), prefix="sim-")
        everything, shares = _partitioned(str(cfg.sim_data), stat and (stat.st_mtime_ns, stat.st_size),
                                          text_col, label_col, fairness.group_column, tuple(cfg.labels), parts,
                                          cfg.partition, cfg.dirichlet_alpha, cfg.seed, cfg.task)
        records = everything.subset(shares[pid])
        privacy = SitePrivacy.from_mapping(cfg.to_flat(), prefix="sim-")
        state = Path(cfg.run_dir or ".").resolve() / "sites"
        state.mkdir(parents=True, exist_ok=True)
        ledger = state / f"{name}.privacy-ledger.json"
        audit_log, audit_key = state / f"{name}.audit.jsonl", state / f"{name}.audit-key"
        fit_counts = state / f"{name}.fits.json"
    else:
        raise FedSiloError("this SuperNode has no data: start it with fl-client --data PATH")
    # The server picks the label set: a real site tells it how many records fall outside, never which labels.
    labels = (encode_tags if cfg.task == "ner" else encode_labels)(records, cfg.labels, f"site {name}",
                                                                   quote_values="data-path" not in node_config)
    texts, redactions = redact(records, privacy, cfg.task)
    if "data-path" in node_config:
        # The site owns its held-out share: the server may ask for less, never more. The split
        # follows the data, not the server's seed, so the same records are held out every run.
        fraction = min(cfg.eval_fraction, float(node_config.get("eval-fraction", DEFAULT_SITE_EVAL_FRACTION)))
        split_seed = int(fingerprint(records).removeprefix("sha256:")[:15], 16)
    else:
        fraction, split_seed = cfg.eval_fraction, cfg.seed
    train_idx, eval_idx = split_train_eval(len(records), fraction, split_seed)
    clean = Records(texts, records.labels, records.groups)
    return SiteData(name, records, privacy, fairness, ledger, audit_log, audit_key, fit_counts, redactions,
                    clean.subset(train_idx), labels[train_idx], clean.subset(eval_idx), labels[eval_idx])


def device_spec(run_config: dict, node_config: dict) -> str:
    """The device a site computes on: a real site's own fl-client --device (node config, never
    the server's), a virtual site fl-sim's --device (the run option sim-device)."""
    if "data-path" in node_config:
        return str(node_config.get("device", "auto"))
    return str(run_config.get("sim-device", "auto"))


@functools.lru_cache(maxsize=2)
def _partitioned(path: str, version, text_col: str, label_col: str, group_col: str, labels: tuple, parts: int,
                 scheme: str, alpha: float, seed: int, task: str) -> tuple[Records, list[np.ndarray]]:
    """The simulation's data file and its split over the virtual sites, read once per process:
    one simulation worker serves many virtual sites, and each would otherwise read and split the
    whole file again (quadratic in the number of sites). `version` (mtime, size) keys a changed file."""
    if task == "ner":  # sentences, shuffled over the sites (the config allows iid only)
        everything = read_sentence_records(path)
        return everything, partition(np.zeros(len(everything), dtype=np.int64), parts, "iid", alpha, seed)
    everything = read_records(path, text_col, label_col, group_col)
    return everything, partition(encode_labels(everything, labels, path), parts, scheme, alpha, seed)


def _reader(cfg: RunConfig):
    """The site's file as records: a text file, or a CoNLL file of sentences (task ner)."""
    if cfg.task == "ner":
        return lambda path, _text, _label, group: read_sentence_records(path, group)
    return read_records


def redaction_types(privacy: SitePrivacy) -> tuple[str, ...]:
    if not privacy.redact:
        return ()
    return tuple(t.strip() for t in privacy.redact_entities.split(",") if t.strip()) or ENTITY_TYPES


def redact(records: Records, privacy: SitePrivacy, task: str = "classify") -> tuple[list[str], Counter]:
    types = redaction_types(privacy)
    if task == "ner":  # token by token, so every tag stays on its word
        return redact_records(records, types)
    if not types:
        return records.texts, Counter()
    return Redactor(types).redact_all(records.texts)
