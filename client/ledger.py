"""The site's privacy budget ledger: every DP round it ever trained on its data, and the cost.

The ledger is a JSON file next to the site's data (format: client/ledger_file.py). A round's
cost is written BEFORE the round trains (write-ahead): a crash after that can only over-count
the spend, never under-count it. Each write is write-new-then-rename with fsync, so a reader
sees the old ledger or the new one, never a torn file. A ledger that cannot be read, does not
verify, or uses another accountant or a larger delta is an error: it is never silently reset.

Tampering. Entries are hash-chained and the whole document is signed with the site's P-256
key, so cutting, editing, reordering entries or replacing the signature is refused. Each round's
record in the site's audit log holds the ledger's anchor (its id, entry count and head hash):
a ledger that is missing, shorter, older or different from what the audit log records is
refused ("restore it from a backup"). Honest limit: whoever holds the site key can rewrite both
the ledger and the audit log, and deleting both together starts afresh; the signature and the
anchor stop edits by anyone without the key, and accidents (a restored old copy, a lost file).

Changed data. The ledger follows the site's data file, not one fingerprint of it: when rows are
added or removed, every round already on the ledger stays composed in (a record's privacy loss
is at most the composition of every round trained on this ledger, whenever it joined), the
next entry records the new fingerprint and record count, and `notes` says what changed.
Delta: the ledger keeps its delta while it is still below 1/n for the current n (so appending a
row never locks a site out); when it no longer is, or the site asks for a smaller one, the whole
history is composed again at the smaller delta. A larger delta is refused: it would lower the
epsilon already spent.

Concurrency. charge() holds an exclusive lock (LEDGER.lock) while it re-reads the ledger,
computes the cost and writes, so two chargers never lose each other's entry; `hold_ledger`
keeps a second fl-client off a ledger for a whole process lifetime (LEDGER.run-lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import time
from pathlib import Path

from client.ledger_file import (FORMAT, LEGACY_FORMAT, check_chain, check_signature, digest_changes,
                                entry_hash, head_of, new_ledger_id, read_anchors, read_doc, record_digests,
                                sign, upgrade_legacy, write_doc)
from common.audit import load_private_key
from common.data import Records
from common.errors import FedSiloError
from common.privacy import epsilon_of

LEDGER_FORMAT = FORMAT


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


def default_delta(n: int) -> float:
    """The site's default delta for n records (as SitePrivacy.delta_for with --delta 0)."""
    return min(1e-5, 0.1 / max(n, 1))


class PrivacyLedger:
    def __init__(self, path: str | Path, dataset_fingerprint: str, n_records: int, delta: float | None,
                 accountant: str, *, signing_key: str | Path | None = None,
                 audit_log: str | Path | None = None, records: Records | None = None):
        """delta: the site's explicit delta, or None for its default (see the module docstring);
        `self.delta` is the one this ledger accounts at. signing_key: the site's private key (its
        audit key): the ledger is signed and must verify against it. audit_log: the site's audit
        log, whose round records hold this ledger's `anchor`. records: the data, to count
        changed records in `notes` (needs signing_key)."""
        self.path = Path(path)
        self.fingerprint = dataset_fingerprint
        self.n_records = n_records
        self.requested_delta = delta
        self.accountant = accountant
        self.audit_log = Path(audit_log) if audit_log is not None else None
        self._key = load_private_key(signing_key) if signing_key is not None else None
        self._digests = record_digests(records, self._key) if records is not None and self._key else None
        self._load()

    # ------------------------------------------------------------------ reading
    def _load(self) -> None:
        """Read and check the ledger on disk; charge() calls it again under the lock."""
        self.notes: list[str] = []
        self.ledger_id, self.entries, self._signed = new_ledger_id(), [], False
        doc = read_doc(self.path)
        anchors = read_anchors(self.audit_log, self._key) if self.audit_log is not None else []
        if doc is None:
            self._check_anchors(anchors, exists=False)
            self.delta = self._resolve_delta(None)
            return
        if doc["format"] == LEGACY_FORMAT:
            doc = upgrade_legacy(doc)
        self._signed = check_signature(doc, self.path, self._key)
        entries, stored_delta = doc.get("entries"), doc.get("delta")
        if (not isinstance(entries, list) or not all(_valid_entry(e) for e in entries)
                or not isinstance(doc.get("ledger_id"), str) or not _valid_delta(stored_delta)):
            raise FedSiloError(f"privacy ledger {self.path} has malformed entries; restore it from a backup")
        check_chain(entries, doc["ledger_id"], self.path)
        if doc.get("accountant") != self.accountant:
            raise FedSiloError(f"privacy ledger {self.path} was kept with accountant={doc.get('accountant')!r}, "
                               f"this site now asks for {self.accountant!r}; keep the ledger's setting")
        self.ledger_id, self.entries = doc["ledger_id"], entries
        self._check_anchors(anchors, exists=True)
        if not self._signed and self._key is not None:
            self.notes.append(f"privacy ledger {self.path} was not signed; the site signs it from the next round on")
        self.delta = self._resolve_delta(stored_delta)
        if entries:  # the signature covers the totals; this catches an unsigned ledger's edits
            last = entries[-1]
            recomputed = epsilon_of(self.history(), last["delta"], self.accountant)
            if not math.isclose(last["epsilon_total"], recomputed, rel_tol=0.02, abs_tol=0.02):
                raise FedSiloError(f"privacy ledger {self.path} says epsilon {last['epsilon_total']:.4g} was spent "
                                   f"but its entries add up to {recomputed:.4g}: it was edited")
        if doc.get("dataset_fingerprint") != self.fingerprint:
            self.notes.append(self._data_change(doc))

    def _check_anchors(self, anchors: list[dict], exists: bool) -> None:
        """The audit log's word on this ledger (by id, or by path when the file is missing) is a
        lower bound: the ledger must hold at least what the log saw, unchanged."""
        here, base = self.path.resolve(), self.audit_log.resolve().parent if self.audit_log else None
        mine = [a for a in anchors
                if a["ledger_id"] == self.ledger_id or (base / a["ledger"]).resolve() == here]
        if not mine:
            return
        latest = max(mine, key=lambda a: a["entries"])
        said = (f"the site's audit log {self.audit_log} records {latest['entries']} round(s) charged to it "
                f"(head {latest['head'][:12]})")
        if not exists:
            raise FedSiloError(f"privacy ledger {self.path} is missing, but {said}: restore it from a backup; "
                               "it is never reset automatically")
        if not self._signed and self._key is not None:
            raise FedSiloError(f"privacy ledger {self.path} is not signed, but {said}: it was replaced; "
                               "restore it from a backup")
        for anchor in mine:
            if anchor["ledger_id"] != self.ledger_id:
                raise FedSiloError(f"privacy ledger {self.path} was replaced: {said} as ledger {anchor['ledger_id']},"
                                   f" this file is ledger {self.ledger_id}; restore it from a backup")
            if anchor["entries"] > len(self.entries):
                raise FedSiloError(f"privacy ledger {self.path} holds {len(self.entries)} round(s), but {said}: "
                                   "rounds were cut off or an older copy was put back; restore it from a backup")
            if anchor["entries"] and entry_hash(self.entries[anchor["entries"] - 1]) != anchor["head"]:
                raise FedSiloError(f"privacy ledger {self.path} differs from the audit log's record of its first "
                                   f"{anchor['entries']} round(s): it was rewritten; restore it from a backup")

    def _resolve_delta(self, stored: float | None) -> float:
        n, asked = max(self.n_records, 1), self.requested_delta
        if stored is None:
            delta = asked if asked is not None else default_delta(n)
        elif asked is not None and asked > stored:
            raise FedSiloError(f"privacy ledger {self.path} was kept with delta={stored!r}, this site now asks for "
                               f"{asked!r}; keep the ledger's setting (a larger delta would lower the epsilon "
                               "already spent) or choose a smaller one")
        elif asked is None and stored < 1.0 / n:
            delta = stored  # a row more or less must not change the delta, nor lock the site out
            if stored != default_delta(n):
                self.notes.append(f"delta {stored:.3g} is kept from this ledger while it is below 1/n "
                                  f"(the default for {n} records would be {default_delta(n):.3g})")
        else:
            delta = asked if asked is not None else default_delta(n)
            if delta < stored:
                self.notes.append(f"delta lowered from {stored:.3g} to {delta:.3g} ({n} records): every round on "
                                  "this ledger is composed again at the smaller delta")
        if delta >= 1.0 / n:
            raise FedSiloError(f"delta {delta} is not below 1/n = {1.0 / n:.3g} for this site's {n} records; "
                               "choose a smaller --delta")
        return float(delta)

    def _data_change(self, doc: dict) -> str:
        detail = ""
        if self._digests and doc.get("record_digests"):
            new, gone = digest_changes(doc["record_digests"], self._digests)
            detail = f": {new} new, {gone} removed, {self.n_records - new} kept"
        return (f"the data changed since this ledger's last round ({doc.get('records')} -> {self.n_records} "
                f"records{detail}); the epsilon {self.spent():.2f} already spent stays on the ledger and "
                "every new round composes on top of it")

    @property
    def head(self) -> str:
        return head_of(self.entries, self.ledger_id)

    @property
    def anchor(self) -> dict:
        """What the site's audit record of a round holds (as "ledger"), so that a ledger later
        found missing, cut short or rewritten is refused."""
        name = str(self.path.resolve())
        if self.audit_log is not None:  # relative: the data folder can be moved as a whole
            name = os.path.relpath(self.path.resolve(), self.audit_log.resolve().parent)
        return {"ledger": name, "ledger_id": self.ledger_id, "entries": len(self.entries), "head": self.head}

    def history(self) -> list[tuple[float, float, int]]:
        return [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in self.entries]

    def spent(self) -> float:
        return epsilon_of(self.history(), self.delta, self.accountant)

    def cost_with(self, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Total epsilon on this ledger if one more round with these parameters trains."""
        return epsilon_of(self.history() + [(noise_multiplier, sample_rate, steps)], self.delta,
                          self.accountant)

    # ------------------------------------------------------------------ writing
    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def charge(self, *, site: str, run_id: str, server_round: int, noise_multiplier: float,
               sample_rate: float, steps: int, budget: float, mechanism: str = "DP-SGD") -> float:
        """Refuse the round if it would exceed `budget`; otherwise record it (durably) and
        return the new total epsilon. Call this before training; then put `anchor` in the
        round's audit record."""
        with _locked(self.lock_path, blocking=True):
            seen, head = len(self.entries), self.head
            self._load()  # under the lock: another charger's entries are counted, never overwritten
            if len(self.entries) < seen or (seen and entry_hash(self.entries[seen - 1]) != head):
                raise FedSiloError(f"privacy ledger {self.path} lost rounds or was rewritten while this site had "
                                   "it open; restore it from a backup")
            if self._signed and self._key is None:
                raise FedSiloError(f"privacy ledger {self.path} is signed: charge it with the site's key")
            spent = self.spent()
            total = self.cost_with(noise_multiplier, sample_rate, steps)
            if total > budget:
                raise BudgetExhausted(f"site {site}: privacy budget exhausted, {spent:.2f} of {budget:.2f} "
                                      f"spent (this round would bring it to {total:.2f})")
            entry = {"run_id": str(run_id), "round": int(server_round), "mechanism": str(mechanism),
                     "sample_rate": float(sample_rate),
                     "noise_multiplier": float(noise_multiplier), "steps": int(steps),
                     "epsilon_total": float(total), "delta": self.delta,
                     "dataset_fingerprint": self.fingerprint, "records": int(self.n_records),
                     "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "prev": self.head}
            self._write(self.entries + [entry])
            self.entries.append(entry)
        return total

    def _write(self, entries: list[dict]) -> None:
        doc = {"format": FORMAT, "ledger_id": self.ledger_id, "accountant": self.accountant, "delta": self.delta,
               "dataset_fingerprint": self.fingerprint, "records": int(self.n_records), "entries": entries}
        if self._digests:
            doc["record_digests"] = self._digests
        write_doc(self.path, sign(doc, self._key))
        self._signed = self._key is not None


def _valid_delta(delta) -> bool:
    return isinstance(delta, float) and 0 < delta < 1


def _valid_entry(entry) -> bool:
    try:
        return (entry["noise_multiplier"] > 0 and 0 < entry["sample_rate"] <= 1 and entry["steps"] >= 1
                and entry["epsilon_total"] >= 0 and isinstance(entry["round"], int) and _valid_delta(entry["delta"])
                and all(isinstance(entry[k], str) for k in ("run_id", "prev", "dataset_fingerprint"))
                and isinstance(entry["records"], int))
    except (KeyError, TypeError):
        return False


# ------------------------------------------------------------------ locks
@contextlib.contextmanager
def _locked(lock_path: Path, blocking: bool):
    """An exclusive flock on a sidecar file (never deleted: deleting a lock file races). The
    kernel drops it when the holder exits, however it exits; yields the open descriptor."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        raise FedSiloError(f"cannot open the lock file {lock_path} ({err.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold_ledger(path: str | Path):
    """Hold the ledger for this process's lifetime (fl-client): a second holder is refused."""
    path = Path(path)
    run_lock = path.with_name(path.name + ".run-lock")
    with contextlib.ExitStack() as held:
        try:
            fd = held.enter_context(_locked(run_lock, blocking=False))
        except BlockingIOError:
            holder = "".join(c for c in run_lock.read_text(errors="replace")[:20] if c.isdigit()) or "unknown"
            raise FedSiloError(f"another fl-client (pid {holder}) is using the privacy ledger {path}; "
                               "stop it first: two processes must not train on one dataset at once") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
