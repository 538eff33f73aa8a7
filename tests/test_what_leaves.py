"""What leaves a site: real rounds of the real ServerApp (server/app.py run()) and the real
ClientApp at three sites, through an in-process Grid that records every message
(tests/inprocess_grid.py): what the server sees is exactly what those records hold.

Under SecAgg+ (the default) a site's update leaves it masked: nothing the server receives from a
site correlates with that site's update, yet the server ends up with the sites' weighted mean
update, exact up to SecAgg+'s quantisation (not exact: a run where SecAgg+ did not run fails).
With or without it, no reply carries raw or redacted text, token ids or per-example values:
only the update (plain) or the masked vector and key material (SecAgg+), and the few scalar
fields the README lists; counts by group (the sites report by ward) only for groups of at least
min-group-size records, never a group per record nor the name of a smaller group. `what_leaks` is the adversary's check; a self-test plants leaks in
copies of real replies and requires that it flags each one.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from client.site import site_data
from common.config import RunConfig
from common.head_stats import SENSITIVITY
from common.model import load_tokenizer
from server.secure_aggregation import SECAGG_CLIP, SECAGG_MAX_WEIGHT, SECAGG_QUANTIZATION
from tests.helpers import LABELS
from tests.inprocess_grid import wire
from common.fairness import MIN_GROUP_SIZE
from tests.site_rounds import PII_ROW, RARE_GROUP, SITES, Round, run_round

# Every metric a site may send, as the README's "What leaves a site" table lists them.
FIT_FIELDS = {"site", "records", "eval_records", "redactions", "dp", "epsilon", "delta", "budget", "accountant",
              "noise_multiplier", "sample_rate", "steps", "mechanisms", "train_loss",
              "time_load", "time_tokenise", "time_train", "device", "peak_rss_mib", "gpu_peak_mib", "ray_node"}
EVAL_FIELDS = {"site", "confusion", "group_confusion", "time_load", "time_tokenise", "time_evaluate"}
WARDS = ("north", "south", RARE_GROUP)  # the group values in the sites' files (tests/site_rounds.py)
# A masked vector is uniform noise: its |r| with an update of n values is about 1/sqrt(n) (0.02 for
# 2,180 values, 0.04 for the 693 of head statistics); flag from 5 of those (p < 1e-6), the update itself gives 1.0
CHANCE_SIGMAS = 5


@pytest.fixture(scope="module")
def secure_round(tiny_model, demo_dir, tmp_path_factory) -> Round:
    return run_round(tiny_model, demo_dir, tmp_path_factory.mktemp("secagg"), secure=True)


@pytest.fixture(scope="module")
def plain_round(tiny_model, demo_dir, tmp_path_factory) -> Round:
    return run_round(tiny_model, demo_dir, tmp_path_factory.mktemp("plain"), secure=False)


# ---------------------------------------------------------------------------- the adversary
def npy(blob: bytes) -> np.ndarray | None:
    if not blob.startswith(b"\x93NUMPY"):
        return None
    return np.load(io.BytesIO(blob), allow_pickle=False)


def what_leaks(reply, rnd: Round) -> list[str]:
    """Everything in one reply that a site must not send: three words in a row of any record
    (raw or redacted) in any string or bytes, four token ids in a row of any record in any
    integer list, array or bytes, a list of floats (per-example values), an array other than one
    packed float32 update or SecAgg+'s integer masked vector (of the update's size, plus its
    one-value weight), and any vector that correlates with a site's true update."""
    n = len(next(iter(rnd.deltas.values())))
    problems, arrays, int_lists, strings = [], [], [], []
    for rec_name, record in reply.content.items():
        if isinstance(record, ArrayRecord):
            arrays += [(f"{rec_name}[{k}]", a.numpy()) for k, a in record.items()]
            continue
        for key, value in record.items():
            where = f"{rec_name}[{key}]"
            items = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) for v in items) and isinstance(value, list):
                problems.append(f"{where}: a list of {len(items)} floats")
            if any(isinstance(v, int) and not isinstance(v, bool) for v in items):
                int_lists.append((where, [int(v) for v in items if isinstance(v, int)]))
            for v in items:
                if isinstance(v, str):
                    strings.append((where, v))
                elif isinstance(v, bytes):
                    array = npy(v)
                    if array is not None:
                        arrays.append((where, array))
                        continue
                    strings.append((where, v.decode("utf-8", errors="ignore")))
                    for dtype in (np.int32, np.int64):
                        if len(v) % np.dtype(dtype).itemsize == 0:
                            int_lists.append((f"{where} as {np.dtype(dtype)}", np.frombuffer(v, dtype).tolist()))
    grams = {" ".join(t.split()[i:i + 3]) for t in rnd.texts for i in range(max(1, len(t.split()) - 2))}
    for where, text in strings:
        if RARE_GROUP in text:
            problems.append(f"{where}: the name of a group too small to report")
        if any(text.count(ward) > 1 for ward in WARDS):
            problems.append(f"{where}: group values per record")
        if where.endswith("[group_confusion]"):
            small = [g for g, m in json.loads(text).items() if np.sum(m) < MIN_GROUP_SIZE]
            problems += [f"{where}: a count of fewer than {MIN_GROUP_SIZE} records" for _ in small]
        int_lists.append((f"{where} (its numbers)", [int(x) for x in re.findall(r"-?\d+", text)]))
        words = text.split()
        hits = {" ".join(words[i:i + 3]) for i in range(len(words))} & grams
        if hits:
            problems.append(f"{where}: text of a record: {sorted(hits)[0]!r}")
    floats = [a for _, a in arrays if a.dtype.kind not in "iu"]
    for where, array in arrays:
        if array.dtype.kind in "iu":  # SecAgg+'s masked vector and its weight; token ids?
            int_lists.append((where, array.ravel().tolist()))
            expected = array.shape in ((n,), (1,))
        else:  # the one packed update of a plain round
            expected = array.dtype == np.float32 and array.shape == (n,) and len(floats) == 1
        if not expected:
            problems.append(f"{where}: unexpected array {array.dtype} {array.shape}")
        if array.size == n:
            for name, delta in sorted(rnd.deltas.items()):
                r = np.corrcoef(array.astype(np.float64).ravel(), delta)[0, 1]
                if abs(r) >= CHANCE_SIGMAS / np.sqrt(n):
                    problems.append(f"{where}: correlated with site {name}'s update (r={r:.2f})")
    for where, values in int_lists:
        runs = {tuple(values[i:i + 4]) for i in range(len(values) - 3)} & rnd.token_grams
        if runs:
            problems.append(f"{where}: token ids of a record: {sorted(runs)[0]}")
    return problems


def stage_of(msg) -> str | None:
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    return configs.get(Key.STAGE) if configs else None


# ---------------------------------------------------------------------------- SecAgg+ round
def test_under_secagg_a_site_update_leaves_masked_and_only_the_sum_is_revealed(secure_round):
    rnd, grid = secure_round, secure_round.grid
    assert rnd.summary["secure_aggregation"] is True
    # SecAgg+ ran: every site went through its four stages, and sent its update only masked
    stages = [Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK]
    for nid, name in SITES.items():
        assert [stage_of(m) for m in grid.sent if m.metadata.dst_node_id == nid
                and m.metadata.message_type == "train"] == stages, name
    n = len(rnd.deltas["A"])
    assert sorted(rnd.deltas) == ["A", "B", "C"] and all(np.abs(d).max() > 1e-3 for d in rnd.deltas.values())
    for name in SITES.values():
        fit = [m for m in rnd.replies(name) if m.metadata.message_type == "train"]
        assert len(fit) == 4 and not any(m.has_error() for m in fit)
        masked = [m for m in fit if Key.MASKED_PARAMETERS in m.content.config_records[RECORD_KEY_CONFIGS]]
        assert len(masked) == 1
        assert all(len(a) == 0 for m in fit for a in m.content.array_records.values())  # no plain update
        vectors = [npy(b) for b in masked[0].content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
        assert [(v.dtype.kind, v.shape) for v in vectors] == [("i", (1,)), ("i", (n,))]
        # The adversary: nothing from this site (any stage, fit or evaluate) spells out a record or
        # correlates with any site's update
        for reply in rnd.replies(name):
            assert what_leaks(reply, rnd) == [], (name, stage_of(reply) or reply.metadata.message_type)
        assert set(masked[0].content.config_records["fitres.metrics"]) <= FIT_FIELDS
        ev = [m for m in rnd.replies(name) if m.metadata.message_type == "evaluate"]
        assert len(ev) == 1 and set(ev[0].content.config_records["evaluateres.metrics"]) <= EVAL_FIELDS
        r = max(abs(np.corrcoef(vectors[1].astype(np.float64), d)[0, 1]) for d in rnd.deltas.values())
        print(f"site {name}: masked vector vs the sites' updates: max |r| = {r:.3f}")

    # ...while the server ends up with the sites' weighted mean update, up to quantisation only.
    assert rnd.summary["rounds_completed"] == [1]
    weights = {k: round(e / SECAGG_MAX_WEIGHT * SECAGG_QUANTIZATION) for k, e in rnd.examples.items()}
    expected = sum(weights[k] * rnd.deltas[k] for k in weights) / sum(weights.values())
    error = float(np.abs(rnd.aggregate - expected).max())
    # Each site's value is stochastically rounded to one of 2**22 levels over +-SECAGG_CLIP after
    # weighting: an error of less than one level per site, `unit` on the mean. Plain FedAvg would
    # be exact (to float rounding, ~1e-8): an error of at least a tenth of a level shows SecAgg+ ran.
    unit = 2 * SECAGG_CLIP / sum(weights.values())
    print(f"SecAgg+ mean vs the sites' true mean: max abs error {error:.2e} (quantisation unit {unit:.2e}), "
          f"largest value {np.abs(expected).max():.2e}")
    assert unit / 10 < error <= len(weights) * unit + 1e-6
    assert np.abs(expected).max() > 100 * unit  # the comparison is not of two near-zero vectors


# ---------------------------------------------------------------------------- plain round
def test_plain_round_sends_one_update_vector_and_the_listed_fields(plain_round):
    rnd = plain_round
    assert rnd.summary["secure_aggregation"] is False and rnd.summary["rounds_completed"] == [1]
    n = len(rnd.deltas["A"])
    for name in SITES.values():
        fit, ev = ([m for m in rnd.replies(name) if m.metadata.message_type == t] for t in ("train", "evaluate"))
        assert len(fit) == len(ev) == 1 and not fit[0].has_error() and not ev[0].has_error()
        fit, ev = fit[0].content, ev[0].content
        arrays = [a.numpy() for record in fit.array_records.values() for a in record.values()]
        # one packed float32 vector: exactly the site's update, nothing else
        assert len(arrays) == 1 and arrays[0].dtype == np.float32 and arrays[0].shape == (n,)
        np.testing.assert_array_equal(arrays[0], rnd.deltas[name])
        metrics = fit.config_records["fitres.metrics"]
        assert set(metrics) <= FIT_FIELDS and metrics["dp"] is True and metrics["site"] == name
        assert "train_loss" not in metrics  # not DP-protected: stays at the site
        assert not ev.array_records and set(ev.config_records["evaluateres.metrics"]) <= EVAL_FIELDS
        confusion = np.array(json.loads(ev.config_records["evaluateres.metrics"]["confusion"]))
        assert confusion.shape == (4, 4) and confusion.sum() == ev.metric_records["evaluateres.num_examples"][
            "num_examples"]
        # Counts by ward: at most one matrix per reported group, never more records than the whole
        groups = json.loads(ev.config_records["evaluateres.metrics"]["group_confusion"])
        assert groups and set(groups) <= {"north", "south", "other"}, groups
        assert (np.sum([np.array(m) for m in groups.values()], axis=0) <= confusion).all()
        # The adversary finds the update itself (unmasked, as expected without SecAgg+: r = 1 with the
        # site's own, and the sites' updates correlate with each other) and nothing else.
        found = sum((what_leaks(m, rnd) for m in rnd.replies(name)), [])
        assert f"fitres.parameters[0]: correlated with site {name}'s update (r=1.00)" in found
        assert all(p.startswith("fitres.parameters[0]: correlated with site ") for p in found), found
    redactions = [m.content.config_records["fitres.metrics"]["redactions"] for m in rnd.replies("A")
                  if m.metadata.message_type == "train"]
    assert [json.loads(r) for r in redactions] == [{"EMAIL": 1, "NAME": 1}]


def test_without_its_operators_consent_a_site_refuses_a_plain_round(tiny_model, demo_dir, tmp_path):
    rnd = run_round(tiny_model, demo_dir, tmp_path, secure=False, consent=False)
    fit = [m for m in rnd.grid.received if m.metadata.message_type == "train"]
    assert len(fit) == 3 and all(m.has_error() and "refuses to send an unmasked update" in m.error.reason
                                 for m in fit)
    assert rnd.deltas == {}  # refused before training: no update was even computed
    assert rnd.summary["rounds_completed"] == [] and not rnd.aggregate.any()


# ---------------------------------------------------------------------------- head statistics
def test_head_statistics_leave_masked_under_secagg(tiny_model, demo_dir, tmp_path):
    # head-init stats: round 1 sends each site's noisy statistics, through SecAgg+ like an update
    rnd = run_round(tiny_model, demo_dir, tmp_path, secure=True, head_init="stats")
    assert rnd.summary["rounds_completed"] == [1]
    n = len(rnd.deltas["A"])
    for name in SITES.values():
        fit = [m for m in rnd.replies(name) if m.metadata.message_type == "train"]
        assert all(len(a) == 0 for m in fit for a in m.content.array_records.values())  # nothing plain
        masked = [m for m in fit if Key.MASKED_PARAMETERS in m.content.config_records[RECORD_KEY_CONFIGS]]
        vectors = [npy(b) for b in masked[0].content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
        assert [(v.dtype.kind, v.shape) for v in vectors] == [("i", (1,)), ("i", (n,))]
        for reply in rnd.replies(name):
            assert what_leaks(reply, rnd) == [], name
        metrics = masked[0].content.config_records["fitres.metrics"]
        assert json.loads(metrics["mechanisms"]) == {"head-statistics": pytest.approx(8.0, rel=0.01)}
        assert metrics["sample_rate"] == 1.0 and metrics["steps"] == 1
    # the site's ledger names the mechanism it charged
    from common.privacy import RELEASE
    ledger = json.loads((tmp_path / "A.ledger.json").read_text())
    assert [(e["mechanism"], e["sample_rate"], e["steps"]) for e in ledger["entries"]] == [(RELEASE, 1.0, 1)]
    # the server solved a head from the sum: the classifier changed, the adapters did not
    rounds = tmp_path / "run" / "rounds"
    before, after = np.load(rounds / "round-0000.npz"), np.load(rounds / "round-0001.npz")
    changed = [k for k in before.files if not np.array_equal(before[k], after[k])]
    assert len(changed) == 2 and len(before.files) > 2, changed


def test_a_plain_release_of_head_statistics_carries_the_sites_noise(tiny_model, demo_dir, tmp_path):
    # The curious server without SecAgg+ gets each site's statistics: they must be noised with
    # std z * sqrt(2) / n on every value (z as the site reports it), not sent as computed.
    exact: dict = {}
    rnd = run_round(tiny_model, demo_dir, tmp_path, secure=False, head_init="stats", exact=exact)
    assert rnd.summary["rounds_completed"] == [1] and sorted(exact) == ["A", "B", "C"]
    for name, (clean, metrics) in exact.items():
        noise = rnd.deltas[name] - clean
        expected = metrics["noise_multiplier"] * SENSITIVITY / metrics["records"]
        assert np.std(noise) == pytest.approx(expected, rel=0.12), name
        assert abs(np.mean(noise)) < 4 * expected / np.sqrt(noise.size)


# ---------------------------------------------------------------------------- the checker catches leaks
def planted(reply, plant) -> object:
    copy = wire(reply)  # a copy, as received
    plant(copy.content)
    return copy


def test_the_adversary_flags_planted_leaks(secure_round):
    rnd = secure_round
    ev = next(m for m in rnd.replies("A") if m.metadata.message_type == "evaluate")
    stage2 = next(m for m in rnd.replies("A") if Key.MASKED_PARAMETERS in m.content.config_records.get(
        RECORD_KEY_CONFIGS, {}))
    assert what_leaks(ev, rnd) == [] and what_leaks(stage2, rnd) == []
    redacted = next(t for t in rnd.texts if "[EMAIL]" in t)
    ids = load_tokenizer(str(rnd.grid.contexts[next(iter(SITES))].run_config["model"]))(PII_ROW)["input_ids"]
    metrics = "evaluateres.metrics"
    delta = rnd.deltas["A"]
    weight = round(rnd.examples["A"] / SECAGG_MAX_WEIGHT * SECAGG_QUANTIZATION)  # what SecAgg+ masks
    unmasked = quantize([delta * weight / SECAGG_QUANTIZATION], SECAGG_CLIP, SECAGG_QUANTIZATION)[0]
    plants = {
        "raw text in a metric": (ev, lambda c: c.config_records[metrics].__setitem__("note", PII_ROW)),
        "redacted text in a metric": (ev, lambda c: c.config_records[metrics].__setitem__("site", redacted)),
        "text in bytes": (ev, lambda c: c.config_records[metrics].__setitem__("x", PII_ROW.encode())),
        "token ids in an int list": (ev, lambda c: c.config_records[metrics].__setitem__("x", ids[5:11])),
        "token ids in a string": (ev, lambda c: c.config_records[metrics].__setitem__("confusion", str(ids))),
        "token ids as int64 bytes": (ev, lambda c: c.config_records[metrics].__setitem__(
            "x", np.asarray(ids[2:9], np.int64).tobytes())),
        "token ids in an array": (ev, lambda c: c.__setitem__("extra", ArrayRecord(
            {"0": Array(np.asarray(ids, np.int64))}))),
        "a small group's count": (ev, lambda c: c.config_records[metrics].__setitem__(
            "group_confusion", json.dumps({"north": np.eye(4, dtype=int).tolist()}))),
        "a small group's name": (ev, lambda c: c.config_records[metrics].__setitem__("x", f"{RARE_GROUP}: 3")),
        "group values per record": (ev, lambda c: c.config_records[metrics].__setitem__("x", "north,south,north")),
        "per-example losses": (ev, lambda c: c.metric_records["evaluateres.loss"].__setitem__(
            "losses", [0.5, 1.25, 0.75])),
        "per-example logits": (ev, lambda c: c.__setitem__("extra", ArrayRecord(
            {"0": Array(np.zeros((40, 4), np.float32))}))),
        "the update, unmasked": (stage2, lambda c: c.config_records[RECORD_KEY_CONFIGS].__setitem__(
            Key.MASKED_PARAMETERS, [_npy(np.array([weight])), _npy(unmasked)])),
        "the update in the clear": (stage2, lambda c: c.__setitem__("fitres.parameters", ArrayRecord(
            {"0": Array(delta.astype(np.float32))}))),
        "a scaled update in a config record": (stage2, lambda c: c.config_records[RECORD_KEY_CONFIGS].__setitem__(
            "x", _npy((delta * 1e4).astype(np.int64)))),
    }
    for what, (reply, plant) in plants.items():
        assert what_leaks(planted(reply, plant), rnd), f"not flagged: {what}"
    assert what_leaks(ev, rnd) == [] and what_leaks(stage2, rnd) == []  # the originals are untouched


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def test_site_trains_on_redacted_text_and_keeps_the_raw_ledger_binding(tiny_model, tmp_path):
    data = tmp_path / "site.tsv"
    data.write_text("text\tlabel\n" + f"{PII_ROW}\tcard\n" * 3 + "my loan was rejected\tloan\n" * 3)
    cfg = RunConfig.from_dict({"model": str(tiny_model), "labels": LABELS, "eval-fraction": 0.0})
    site = site_data(cfg, {"site": "A", "data-path": str(data)})
    assert all("mary.johnson@example.com" not in t and "Mary Johnson" not in t for t in site.train.texts)
    assert any("[EMAIL]" in t and "[NAME]" in t for t in site.train.texts)
    assert PII_ROW in site.records.texts  # the ledger is bound to the data as held
    off = site_data(cfg, {"site": "A", "data-path": str(data), "redact": False})
    assert PII_ROW in off.train.texts and not off.redactions
