"""The privacy ledger against an attacker (or an accident) at the site: every test plays the
attack and expects the ledger to refuse it, or to keep counting what was already spent."""

import base64
import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from client.ledger import PrivacyLedger, fingerprint, hold_ledger
from common.audit import AuditLog, generate_key, load_private_key
from common.data import Records
from common.errors import FedSiloError
from common.privacy import epsilon_of
from tests.helpers import ROOT

RECORDS = Records([f"text number {i}" for i in range(500)], ["a", "b"] * 250)
SIGMAS = (1.0, 1.5, 2.0)  # three distinct rounds, so that reordering them is visible


@pytest.fixture()
def site(tmp_path):
    key = tmp_path / "site.key"
    generate_key(key)
    return SimpleNamespace(key=key, log=tmp_path / "data.tsv.audit.jsonl",
                           ledger=tmp_path / "data.tsv.privacy-ledger.json")


def open_ledger(site, records=RECORDS, delta=1e-5):
    return PrivacyLedger(site.ledger, fingerprint(records), len(records), delta, "rdp", signing_key=site.key,
                         audit_log=site.log, records=records)


def train_round(site, rnd, sigma=1.0, records=RECORDS):
    """What a site's round does: charge the ledger, train, then sign the round's audit record
    with the ledger's anchor in it."""
    led = open_ledger(site, records)
    epsilon = led.charge(site="B", run_id="r1", server_round=rnd, noise_multiplier=sigma, sample_rate=0.1,
                         steps=10, budget=100.0)
    AuditLog(site.log, site.key, "site B").append("round", {"round": rnd, "epsilon": epsilon, "ledger": led.anchor})
    return epsilon


def rewrite(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def consistent_totals(doc):
    """Recompute every entry's total, as a careful editor would (the old ledger checked the last)."""
    history = []
    for entry in doc["entries"]:
        history.append((entry["noise_multiplier"], entry["sample_rate"], entry["steps"]))
        entry["epsilon_total"] = epsilon_of(history, doc["delta"], "rdp")


def cut(doc):
    doc["entries"] = doc["entries"][:1]


def edit(doc):
    doc["entries"][0]["steps"] = 2
    consistent_totals(doc)


def reorder(doc):
    doc["entries"][0], doc["entries"][1] = doc["entries"][1], doc["entries"][0]
    consistent_totals(doc)


def unsign(doc):
    cut(doc)
    doc.update(signature=None, key_id=None, public_key=None)


def forge(key_path):
    def change(doc):
        cut(doc)
        key = load_private_key(key_path)
        from client.ledger_file import sign  # the attacker runs FedSilo's own code with a key of his own
        doc.update(sign({k: v for k, v in doc.items() if k not in ("signature", "key_id", "public_key")}, key))
    return change


@pytest.mark.parametrize("attack, fragment", [
    ("cut", "signature does not verify"),
    ("edit", "signature does not verify"),
    ("reorder", "signature does not verify"),
    ("old signature", "signature does not verify"),
    ("older copy", r"holds 1 round\(s\), but the site's audit log .* records 3 round\(s\) charged to it"),
    ("unsigned", r"is not signed, but the site's audit log .* records 3 round\(s\)"),
    ("forged", "is signed with another key"),
    ("another ledger", "was replaced: the site's audit log .* records 3 round"),
])
def test_a_ledger_cut_edited_reordered_or_resigned_is_refused(site, tmp_path, attack, fragment):
    train_round(site, 1, SIGMAS[0])
    one_round = site.ledger.read_bytes()
    for rnd, sigma in enumerate(SIGMAS[1:], 2):
        train_round(site, rnd, sigma)
    spent = open_ledger(site).spent()
    if attack == "older copy":  # a validly signed ledger, but from before the last two rounds
        site.ledger.write_bytes(one_round)
    elif attack == "old signature":
        rewrite(site.ledger, lambda doc: doc.update(signature=json.loads(one_round).get("signature")))
    elif attack == "forged":
        other = tmp_path / "attacker.key"
        generate_key(other)
        rewrite(site.ledger, forge(other))
    elif attack == "another ledger":  # a fresh ledger, validly signed with the site's key, moved in
        fresh = SimpleNamespace(key=site.key, log=tmp_path / "other.audit.jsonl", ledger=tmp_path / "other.json")
        train_round(fresh, 1)
        site.ledger.write_bytes(fresh.ledger.read_bytes())
    else:
        rewrite(site.ledger, {"cut": cut, "edit": edit, "reorder": reorder, "unsigned": unsign}[attack])
    tampered = site.ledger.read_bytes()
    with pytest.raises(FedSiloError, match=r"privacy ledger .*" + fragment) as err:
        open_ledger(site)
    assert "\n" not in str(err.value) and "restore it from a backup" in str(err.value)
    assert site.ledger.read_bytes() == tampered  # refused, never reset or rewritten
    assert spent == pytest.approx(epsilon_of([(s, 0.1, 10) for s in SIGMAS], 1e-5, "rdp"))


def test_a_deleted_ledger_is_refused_while_the_audit_log_records_its_charges(site):
    for rnd in (1, 2):
        train_round(site, rnd)
    backup = site.ledger.read_bytes()
    site.ledger.unlink()
    with pytest.raises(FedSiloError, match=r"is missing, but the site's audit log .* records 2 round\(s\) charged"
                                           r".*restore it from a backup"):
        open_ledger(site)
    assert not site.ledger.exists()  # no fresh ledger was started
    site.ledger.write_bytes(backup)  # restored: the site carries on from what it had spent
    assert train_round(site, 3) == pytest.approx(epsilon_of([(1.0, 0.1, 10)] * 3, 1e-5, "rdp"))


def test_a_row_appended_to_the_data_keeps_the_epsilon_already_spent(site):
    spent = [train_round(site, rnd) for rnd in (1, 2)]
    grown = Records(RECORDS.texts + ["a new row"], RECORDS.labels + ["a"])
    led = open_ledger(site, grown)  # once refused as "another dataset", with a fresh ledger suggested
    assert spent[-1] > 0 and led.spent() == pytest.approx(spent[-1])
    assert "(500 -> 501 records: 1 new, 0 removed, 500 kept)" in led.notes[0]
    assert train_round(site, 3, records=grown) == pytest.approx(epsilon_of([(1.0, 0.1, 10)] * 3, 1e-5, "rdp"))
    entries = json.loads(site.ledger.read_text())["entries"]
    assert [(e["records"], e["dataset_fingerprint"]) for e in entries] == [
        (500, fingerprint(RECORDS)), (500, fingerprint(RECORDS)), (501, fingerprint(grown))]


def test_the_default_delta_survives_a_new_row_and_only_ever_gets_smaller(site):
    def at(n, delta=None):
        records = Records([f"row {i}" for i in range(n)], ["a"] * n)
        return PrivacyLedger(site.ledger, fingerprint(records), n, delta, "rdp", signing_key=site.key,
                             audit_log=site.log)
    first = at(20_000)  # default delta 0.1/n = 5e-6
    spent = first.charge(site="B", run_id="r", server_round=1, noise_multiplier=1.0, sample_rate=0.1, steps=10,
                         budget=100.0)
    grown = at(20_001)  # the default would now be 4.99975e-6: the ledger keeps 5e-6 (< 1/n) and says so
    assert grown.delta == 5e-6 and grown.spent() == pytest.approx(spent) and "kept from this ledger" in grown.notes[0]
    huge = at(250_000)  # 5e-6 is no longer below 1/n: the history is composed again at a smaller delta
    assert huge.delta == pytest.approx(4e-7) and huge.spent() > spent and "delta lowered" in huge.notes[0]
    with pytest.raises(FedSiloError, match="delta=5e-06, this site now asks for 1e-05"):
        at(20_000, delta=1e-5)  # larger: it would lower the epsilon already spent


# ------------------------------------------------------------------ concurrency
def charge_rounds(ledger_path, key, start, rounds, run_id):
    led = PrivacyLedger(ledger_path, fingerprint(RECORDS), len(RECORDS), 1e-5, "rdp", signing_key=key)
    start.wait()  # both processes have read the ledger before either charges
    for rnd in range(1, rounds + 1):
        led.charge(site="B", run_id=run_id, server_round=rnd, noise_multiplier=1.0, sample_rate=0.01, steps=5,
                   budget=1e9)


def test_two_processes_charging_one_ledger_lose_no_round(site):
    ctx, rounds = multiprocessing.get_context("spawn"), 4
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=charge_rounds, args=(site.ledger, site.key, start, rounds, name))
             for name in ("first", "second")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
        assert proc.exitcode == 0
    led = PrivacyLedger(site.ledger, fingerprint(RECORDS), len(RECORDS), 1e-5, "rdp", signing_key=site.key)
    assert sorted((e["run_id"], e["round"]) for e in led.entries) == [
        (name, rnd) for name in ("first", "second") for rnd in range(1, rounds + 1)]
    assert led.spent() == pytest.approx(epsilon_of([(1.0, 0.01, 5)] * 2 * rounds, 1e-5, "rdp"))


SLOW_CHARGER = """
import sys, time
import client.ledger as ledger
from client.ledger import PrivacyLedger
from tests.test_ledger import RECORDS, fingerprint, without_lock
if sys.argv[3] == "unlocked":
    without_lock(ledger)
cost_with = PrivacyLedger.cost_with
def slow_cost_with(self, *args):  # runs after charge() has read the ledger, before it writes
    print("computing", flush=True)
    time.sleep(3)
    return cost_with(self, *args)
PrivacyLedger.cost_with = slow_cost_with
PrivacyLedger(sys.argv[1], fingerprint(RECORDS), 500, 1e-5, "rdp", signing_key=sys.argv[2]).charge(
    site="B", run_id="slow", server_round=1, noise_multiplier=1.0, sample_rate=0.1, steps=10, budget=100.0)
"""


def without_lock(module):
    module._locked = lambda path, blocking: contextlib.nullcontext(-1)


@pytest.mark.parametrize("lock", ["locked", "unlocked"])
def test_a_charge_waits_for_one_in_flight_and_counts_it(site, monkeypatch, lock):
    """Deterministic: another charger has read the ledger and is computing when this one starts.
    Without the lock (the second case, kept to show the test can see it) its round is lost."""
    import client.ledger as ledger_module

    mine = PrivacyLedger(site.ledger, fingerprint(RECORDS), 500, 1e-5, "rdp", signing_key=site.key)
    other = subprocess.Popen([sys.executable, "-c", SLOW_CHARGER, str(site.ledger), str(site.key), lock],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "computing"
    if lock == "unlocked":
        monkeypatch.setattr(ledger_module, "_locked", lambda path, blocking: contextlib.nullcontext(-1))
    mine.charge(site="B", run_id="fast", server_round=1, noise_multiplier=1.0, sample_rate=0.1, steps=10,
                budget=100.0)
    assert other.wait(timeout=120) == 0
    runs = [e["run_id"] for e in json.loads(site.ledger.read_text())["entries"]]
    assert runs == (["slow", "fast"] if lock == "locked" else ["slow"])  # unlocked: "fast" was overwritten


HOLDER = """
import sys, time
from client.ledger import hold_ledger
with hold_ledger(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_hold_ledger_refuses_a_second_fl_client_and_frees_on_exit_or_kill_9(site):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(site.ledger)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FedSiloError, match=rf"^another fl-client \(pid {holder.pid}\) is using the privacy "
                                               rf"ledger {site.ledger}; stop it first"):
            with hold_ledger(site.ledger):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with hold_ledger(site.ledger):  # the kernel freed the killed holder's lock
        with pytest.raises(FedSiloError, match=rf"\(pid {os.getpid()}\)"):
            with hold_ledger(site.ledger):  # a second holder in the same process is refused too
                pass
    with hold_ledger(site.ledger):  # and leaving the block frees it
        pass


# ------------------------------------------------------------------ back-compat
def test_an_unsigned_ledger_of_the_older_format_is_adopted_and_signed(site):
    eps = epsilon_of([(1.0, 0.1, 10)], 1e-5, "rdp")
    site.ledger.write_text(json.dumps({
        "format": "fedsilo-privacy-ledger/1", "dataset_fingerprint": fingerprint(RECORDS), "records": 500,
        "accountant": "rdp", "delta": 1e-5, "entries": [{
            "run_id": "old", "round": 1, "sample_rate": 0.1, "noise_multiplier": 1.0, "steps": 10,
            "epsilon_total": eps, "time": "2025-01-01T00:00:00Z"}]}))
    led = open_ledger(site)
    assert led.spent() == pytest.approx(eps) and "was not signed" in led.notes[0]
    train_round(site, 2)
    doc = json.loads(site.ledger.read_text())
    assert doc["format"] == "fedsilo-privacy-ledger/2" and base64.b64decode(doc["signature"])
    assert [e["run_id"] for e in doc["entries"]] == ["old", "r1"] and open_ledger(site).notes == []
