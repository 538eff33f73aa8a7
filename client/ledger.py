"""The site's privacy budget ledger: every DP round it ever trained on a dataset, and the cost.

The ledger is a JSON file next to the site's data, bound to a fingerprint of the records.
A round's cost is written BEFORE the round trains (write-ahead): a crash after that can only
over-count the spend, never under-count it. Each write is write-new-then-rename with fsync,
so a reader sees the old ledger or the new one, never a torn file. A ledger that cannot be
read, belongs to another dataset, or uses another accountant or delta is an error: it is
never silently reset.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

from common.data import Records
from common.errors import FedSiloError
from common.files import atomic_write_json
from common.privacy import epsilon_of

LEDGER_FORMAT = "fedsilo-privacy-ledger/1"


class BudgetExhausted(FedSiloError):
    """This round would take the site past its own privacy budget."""


def fingerprint(records: Records) -> str:
    h = hashlib.sha256()
    for text, label in zip(records.texts, records.labels):
        h.update(text.encode("utf-8") + b"\x1f" + label.encode("utf-8") + b"\x1e")
    return "sha256:" + h.hexdigest()


def default_ledger_path(data_path: str | Path) -> Path:
    data_path = Path(data_path)
    return data_path.with_name(data_path.name + ".privacy-ledger.json")


class PrivacyLedger:
    def __init__(self, path: str | Path, dataset_fingerprint: str, n_records: int, delta: float,
                 accountant: str):
        self.path = Path(path)
        self.fingerprint = dataset_fingerprint
        self.n_records = n_records
        self.delta = delta
        self.accountant = accountant
        self.entries: list[dict] = []
        if self.path.exists():
            self._load()

    # ------------------------------------------------------------------ reading
    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise FedSiloError(f"privacy ledger {self.path} is unreadable or corrupted ({err}); "
                               "restore it from a backup: it is never reset automatically") from None
        if not isinstance(doc, dict) or doc.get("format") != LEDGER_FORMAT:
            raise FedSiloError(f"{self.path} is not a FedSilo privacy ledger ({LEDGER_FORMAT})")
        if doc.get("dataset_fingerprint") != self.fingerprint:
            raise FedSiloError(f"privacy ledger {self.path} belongs to another dataset "
                               f"({doc.get('dataset_fingerprint')}, this data is {self.fingerprint}); "
                               "keep each dataset's ledger, or pass --ledger for this one")
        for key, mine in (("accountant", self.accountant), ("delta", self.delta)):
            if doc.get(key) != mine:
                raise FedSiloError(f"privacy ledger {self.path} was kept with {key}={doc.get(key)!r}, "
                                   f"this site now asks for {mine!r}; keep the ledger's setting")
        entries = doc.get("entries")
        if not isinstance(entries, list) or not all(_valid_entry(e) for e in entries):
            raise FedSiloError(f"privacy ledger {self.path} has malformed entries; restore it from a backup")
        self.entries = entries
        recorded = entries[-1]["epsilon_total"] if entries else 0.0
        recomputed = self.spent()
        if not math.isclose(recorded, recomputed, rel_tol=0.02, abs_tol=0.02):
            raise FedSiloError(f"privacy ledger {self.path} says epsilon {recorded:.4g} was spent but "
                               f"its entries add up to {recomputed:.4g}: it was edited")

    def history(self) -> list[tuple[float, float, int]]:
        return [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in self.entries]

    def spent(self) -> float:
        return epsilon_of(self.history(), self.delta, self.accountant)

    def cost_with(self, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Total epsilon on this dataset if one more round with these parameters trains."""
        return epsilon_of(self.history() + [(noise_multiplier, sample_rate, steps)], self.delta,
                          self.accountant)

    # ------------------------------------------------------------------ writing
    def charge(self, *, site: str, run_id: str, server_round: int, noise_multiplier: float,
               sample_rate: float, steps: int, budget: float) -> float:
        """Refuse the round if it would exceed `budget`; otherwise record it (durably) and
        return the new total epsilon. Call this before training."""
        spent = self.spent()
        total = self.cost_with(noise_multiplier, sample_rate, steps)
        if total > budget:
            raise BudgetExhausted(f"site {site}: privacy budget exhausted, {spent:.2f} of {budget:.2f} "
                                  f"spent (this round would bring it to {total:.2f})")
        entry = {"run_id": str(run_id), "round": int(server_round), "sample_rate": float(sample_rate),
                 "noise_multiplier": float(noise_multiplier), "steps": int(steps),
                 "epsilon_total": float(total), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._write(self.entries + [entry])
        self.entries.append(entry)
        return total

    def _write(self, entries: list[dict]) -> None:
        doc = {"format": LEDGER_FORMAT, "dataset_fingerprint": self.fingerprint,
               "records": self.n_records, "accountant": self.accountant, "delta": self.delta,
               "entries": entries}
        try:
            atomic_write_json(self.path, doc)
        except OSError as err:
            raise FedSiloError(f"cannot write privacy ledger {self.path} ({err.strerror}); "
                               "the round is refused") from None


def _valid_entry(entry) -> bool:
    try:
        return (entry["noise_multiplier"] > 0 and 0 < entry["sample_rate"] <= 1 and entry["steps"] >= 1
                and entry["epsilon_total"] >= 0 and isinstance(entry["round"], int))
    except (KeyError, TypeError):
        return False
