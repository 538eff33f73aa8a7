"""Who this site is and which of its records it trains and evaluates on.

One ClientApp serves both engines: in deployment the SuperNode's node config names the site
and its data file; in simulation Flower hands out partition ids and the site takes its share
of the run's `sim-data` file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.ledger import default_ledger_path
from common.config import RunConfig
from common.data import Records, encode_labels, partition, read_records, split_train_eval
from common.errors import FedSiloError
from common.privacy import SitePrivacy


@dataclass(frozen=True)
class SiteData:
    name: str
    records: Records  # everything the site holds: what its privacy ledger is bound to
    privacy: SitePrivacy  # the site's own DP settings
    ledger_path: Path
    train: Records
    train_labels: np.ndarray
    eval: Records
    eval_labels: np.ndarray


def site_data(cfg: RunConfig, node_config: dict) -> SiteData:
    text_col = str(node_config.get("text-column", cfg.text_column))
    label_col = str(node_config.get("label-column", cfg.label_column))
    if "data-path" in node_config:
        name = str(node_config.get("site", "site"))
        records = read_records(str(node_config["data-path"]), text_col, label_col)
        # Deployment: privacy settings come from fl-client, never from the server's run config.
        privacy = SitePrivacy.from_mapping(node_config)
        ledger = Path(str(node_config.get("ledger") or default_ledger_path(node_config["data-path"])))
    elif "partition-id" in node_config:
        if not cfg.sim_data:
            raise FedSiloError("simulation needs the run option sim-data (the file to partition)")
        pid, parts = int(node_config["partition-id"]), int(node_config["num-partitions"])
        name = f"sim-{pid}"
        everything = read_records(cfg.sim_data, text_col, label_col)
        all_labels = encode_labels(everything, cfg.labels, cfg.sim_data)
        shares = partition(all_labels, parts, cfg.partition, cfg.dirichlet_alpha, cfg.seed)
        records = everything.subset(shares[pid])
        privacy = SitePrivacy.from_mapping(cfg.to_flat(), prefix="sim-")
        ledger = Path(cfg.run_dir or ".").resolve() / "ledgers" / f"{name}.privacy-ledger.json"
        ledger.parent.mkdir(parents=True, exist_ok=True)
    else:
        raise FedSiloError("this SuperNode has no data: start it with fl-client --data PATH")
    labels = encode_labels(records, cfg.labels, f"site {name}")
    train_idx, eval_idx = split_train_eval(len(records), cfg.eval_fraction, cfg.seed)
    return SiteData(name, records, privacy, ledger, records.subset(train_idx), labels[train_idx],
                    records.subset(eval_idx), labels[eval_idx])
