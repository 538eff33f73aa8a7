"""Differential privacy at the site: the ledger, the accountant, and per-example clipping."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import client.private_train as private_train
from client.ledger import BudgetExhausted, PrivacyLedger, fingerprint
from client.private_train import DPStepPlan, backward_private, make_private
from common.batching import collate, encode
from common.config import RunConfig
from common.data import Records
from common.errors import FedSiloError
from common.model import build_model, load_tokenizer
from common.privacy import SitePrivacy, calibrate_noise, epsilon_of, sample_rate, steps_per_round
from tests.helpers import ROOT

RECORDS = Records([f"text number {i}" for i in range(500)], ["a", "b"] * 250)
FP = fingerprint(RECORDS)


def ledger(tmp_path, accountant="prv", delta=1e-5, records=RECORDS):
    return PrivacyLedger(tmp_path / "data.tsv.privacy-ledger.json", fingerprint(records), len(records),
                         delta, accountant)


def charge(led, rnd, sigma=1.0, q=0.1, steps=10, budget=8.0, run="r1"):
    return led.charge(site="B", run_id=run, server_round=rnd, noise_multiplier=sigma, sample_rate=q,
                      steps=steps, budget=budget)


# ------------------------------------------------------------------ accounting
# An independent accountant (Google's dp_accounting, PLD) checks every reported epsilon: tests/test_accountant.py


def test_noise_calibration_spends_the_target_over_the_planned_rounds(tmp_path):
    q, steps, rounds = sample_rate(64, 400), steps_per_round(sample_rate(64, 400), 2), 3
    sigma = calibrate_noise(3.0, 1e-5, q, steps * rounds, "prv")
    led = ledger(tmp_path)
    spent = [charge(led, r, sigma, q, steps, budget=3.0) for r in range(1, rounds + 1)]
    assert 2.9 < spent[-1] <= 3.0 and spent == sorted(spent)
    with pytest.raises(BudgetExhausted):
        charge(led, rounds + 1, sigma, q, steps, budget=3.0)


# ------------------------------------------------------------------ the ledger
def test_ledger_refuses_a_round_past_the_budget_and_keeps_the_refusal_out(tmp_path):
    led = ledger(tmp_path)
    first = charge(led, 1, sigma=1.2, q=0.2, steps=20, budget=6.0)  # about 4.9
    with pytest.raises(BudgetExhausted, match=rf"site B: privacy budget exhausted, {first:.2f} of 6.00 spent"):
        charge(led, 2, sigma=1.2, q=0.2, steps=20, budget=6.0)  # would be about 6.7
    assert len(json.loads(led.path.read_text())["entries"]) == 1


def test_ledger_accumulates_across_runs_and_restarts(tmp_path):
    e1 = charge(ledger(tmp_path), 1, run="first-run")
    e2 = charge(ledger(tmp_path), 1, run="second-run")  # a new process, the same dataset
    assert e2 > e1 and ledger(tmp_path).spent() == pytest.approx(e2)
    assert [e["run_id"] for e in json.loads(ledger(tmp_path).path.read_text())["entries"]] == ["first-run", "second-run"]


@pytest.mark.parametrize("damage, fragment", [
    (lambda p: p.write_text("{not json"), "unreadable or corrupted"),
    (lambda p: p.write_text('{"format": "something-else"}'), "not a FedSilo privacy ledger"),
    # (another dataset's fingerprint is no longer refused: see the next test)
    (lambda p: p.write_text(p.read_text().replace('"prev": "', '"prev": "0')), "does not follow the one before it"),
    (lambda p: p.write_text(p.read_text().replace('"steps": 10', '"steps": 1')), "it was edited"),
    (lambda p: p.write_text(p.read_text().replace('"steps": 10', '"steps": -3')), "malformed entries"),
])
def test_damaged_or_foreign_ledger_is_an_error_never_a_reset(tmp_path, damage, fragment):
    charge(ledger(tmp_path), 1)
    damage(ledger(tmp_path).path)
    before = (tmp_path / "data.tsv.privacy-ledger.json").read_bytes()
    with pytest.raises(FedSiloError, match=fragment):
        ledger(tmp_path)
    assert (tmp_path / "data.tsv.privacy-ledger.json").read_bytes() == before  # untouched


def test_ledger_follows_changed_data_but_refuses_another_setting(tmp_path):
    # Deliberately changed: changed data is no longer "another dataset" (that refusal suggested
    # a fresh ledger, so records that had spent budget started from zero). The spend stays.
    spent = charge(ledger(tmp_path), 1)
    other = Records(RECORDS.texts[:-1] + ["changed"], RECORDS.labels)
    changed = ledger(tmp_path, records=other)
    assert changed.spent() == pytest.approx(spent) and "the data changed" in changed.notes[0]
    with pytest.raises(FedSiloError, match="accountant='prv'"):
        ledger(tmp_path, accountant="rdp")
    with pytest.raises(FedSiloError, match="delta=1e-05"):
        ledger(tmp_path, delta=1e-4)  # a larger delta would lower the epsilon already spent
    smaller = ledger(tmp_path, delta=1e-6)  # a smaller one composes the whole history again
    assert smaller.spent() > spent and "delta lowered" in smaller.notes[0]


CRASH_LOOP = """
import sys
from client.ledger import PrivacyLedger
path, fp = sys.argv[1], sys.argv[2]
for i in range(10_000):
    led = PrivacyLedger(path, fp, 500, 1e-5, "rdp")
    led.charge(site="B", run_id="crash", server_round=len(led.entries) + 1, noise_multiplier=50.0,
               sample_rate=0.01, steps=1, budget=1e9)
    if i == 0:
        print("ready", flush=True)  # imports done, one round written: kill from here on
"""


def test_ledger_is_intact_after_kill_9_at_random_moments_and_a_restart_continues(tmp_path):
    path = tmp_path / "data.tsv.privacy-ledger.json"
    rng = np.random.default_rng(0)
    seen = 0
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", CRASH_LOOP, str(path), FP], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.01, 0.3)))
        os.kill(proc.pid, signal.SIGKILL)  # between computing a round's cost and writing it, or anywhere
        proc.wait()
        led = PrivacyLedger(path, FP, 500, 1e-5, "rdp")  # loads, validates, recomputes the total
        rounds = [e["round"] for e in led.entries]
        assert rounds == list(range(1, len(rounds) + 1)) and len(rounds) >= seen
        seen = len(rounds)
    assert seen > 0
    led.charge(site="B", run_id="restart", server_round=seen + 1, noise_multiplier=50.0, sample_rate=0.01,
               steps=1, budget=1e9)
    assert [e["round"] for e in PrivacyLedger(path, FP, 500, 1e-5, "rdp").entries] == list(range(1, seen + 2))
    # a temporary file left by a kill mid-write is gone after the next write
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------ site settings
@pytest.mark.parametrize("raw, fragment", [
    ({"target-epsilon": 0.0}, "target-epsilon: must be >="),
    ({"target-epsilon": -1.0}, "target-epsilon: must be >="),
    ({"target-epsilon": 9.0, "privacy-budget": 8.0}, "larger than the privacy-budget"),
    ({"accountant": "gdp"}, "accountant: must be one of"),
    ({"dp": "yes"}, "dp: expected bool"),
])
def test_bad_privacy_settings(raw, fragment):
    with pytest.raises(FedSiloError, match=fragment):
        SitePrivacy.from_mapping(raw)


def test_delta_defaults_below_one_over_n_and_rejects_larger():
    assert SitePrivacy().delta_for(50) == 1e-5
    assert SitePrivacy().delta_for(10**6) == pytest.approx(1e-7)
    with pytest.raises(FedSiloError, match="not below 1/n"):
        SitePrivacy(delta=0.01).delta_for(500)


def test_epsilon_of_nothing_is_zero():
    assert epsilon_of([], 1e-5, "prv") == 0.0


# ------------------------------------------------------------------ clipping really holds
@pytest.fixture()
def batch_setup(tiny_model):
    def make(trainable):
        cfg = RunConfig.from_dict({"model": str(tiny_model), "labels": "a,b", "trainable": trainable})
        model, tok = build_model(cfg), load_tokenizer(cfg.model)
        texts = ["short", "a much longer sentence with many more tokens than the first one",
                 "medium length text here", "tiny", "another fairly long example sentence for padding"]
        # train mode (Opacus hooks need it); the tiny model has no dropout, so passes are deterministic
        return model.train(), encode(tok, texts, 64, np.array([0, 1, 1, 0, 1])), tok.pad_token_id
    return make


def per_example_grads(model, data, pad_id):
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(len(data)):
        batch = collate(data, [i], pad_id)
        labels = batch.pop("labels")
        grads = torch.autograd.grad(F.cross_entropy(model(**batch).logits, labels), params)
        out.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(out)


def private_gradient(model, data, pad_id, max_grad_norm, ghost, micro=None):
    """The averaged clipped gradient our DP step produces (noise multiplier 0 to see it)."""
    idx = np.arange(len(data))
    module, optimizer = make_private(model, 0.0, DPStepPlan(0.0, 1.0, 1, max_grad_norm), len(idx), ghost)
    old = private_train.MICRO_BATCH
    private_train.MICRO_BATCH = micro or old
    try:
        backward_private(module, optimizer, data, idx, pad_id, ghost)
    finally:
        private_train.MICRO_BATCH = old
    optimizer.pre_step()  # clip, add (zero) noise, divide by the expected batch size
    grad = torch.cat([p.grad.reshape(-1) for p in optimizer.params]).clone()
    optimizer.zero_grad(set_to_none=True)
    module.remove_hooks()
    module.cleanup()
    return grad


@pytest.mark.parametrize("trainable, ghost", [("lora", False), ("head", False), ("full", True)])
def test_per_example_clipping_holds_in_every_training_mode(batch_setup, trainable, ghost):
    model, data, pad_id = batch_setup(trainable)
    raw = per_example_grads(model, data, pad_id)
    bound = 0.5 * float(raw.norm(dim=1).min())  # every example's gradient is above the bound
    expected = (raw * (bound / raw.norm(dim=1)).clamp(max=1.0)[:, None]).sum(0) / len(data)
    got = private_gradient(model, data, pad_id, bound, ghost)
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=1e-7)
    for i in range(len(data)):  # one record alone moves the model by at most the bound
        alone = private_gradient(model, encode_subset(data, [i]), pad_id, bound, ghost)
        assert float(alone.norm()) <= bound * (1 + 1e-4)


def test_dp_training_in_head_mode_moves_the_head_and_nothing_else(batch_setup):
    model, data, pad_id = batch_setup("head")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    private_train.train_dp(model, data, 3e-2, DPStepPlan(1.0, 0.5, 4, 1.0), pad_id)
    moved = sorted(name for name, p in model.named_parameters() if not torch.equal(p, before[name]))
    assert moved == ["classifier.bias", "classifier.weight"]


def encode_subset(data, idx):
    return type(data)([data.ids[i] for i in idx], data.labels[idx])


def test_ghost_mode_model_loss_would_skip_clipping_and_ours_does_not(batch_setup):
    """The trap: in ghost mode, backward() on the model's own loss raises nothing and clips nothing."""
    model, data, pad_id = batch_setup("full")
    bound = 1e-3
    module, optimizer = make_private(model, 0.0, DPStepPlan(0.0, 1.0, 1, bound), len(data), ghost=True)
    batch = collate(data, list(range(len(data))), pad_id)
    module(**batch).loss.backward()  # what a careless loop would do
    optimizer.pre_step()
    unclipped = float(torch.cat([p.grad.reshape(-1) for p in optimizer.params]).norm())
    optimizer.zero_grad(set_to_none=True)
    module.remove_hooks()
    module.cleanup()
    assert unclipped > 10 * bound  # clipping silently skipped
    assert float(private_gradient(model, data, pad_id, bound, ghost=True).norm()) <= bound * (1 + 1e-4)


def test_micro_batches_give_the_same_step_as_one_padded_batch(batch_setup):
    model, data, pad_id = batch_setup("lora")
    whole = private_gradient(model, data, pad_id, 0.05, ghost=False, micro=1000)
    split = private_gradient(model, data, pad_id, 0.05, ghost=False, micro=2)
    torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-8)


def test_a_write_removes_the_temporary_file_a_killed_writer_left(tmp_path):
    from common.files import atomic_write_json

    target = tmp_path / "ledger.json"
    left = tmp_path / ".ledger.json.k3x9q.tmp"  # what mkstemp made before the writer was killed
    left.write_text('{"half": ')
    other = tmp_path / ".other.json.a1b2.tmp"  # another file's: not touched
    other.write_text("x")
    atomic_write_json(target, {"ok": True})
    assert not left.exists() and other.exists() and target.read_text().startswith("{")
