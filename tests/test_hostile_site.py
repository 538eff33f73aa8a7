"""A hostile site against the real strategy: whatever its reports hold, the coordinator goes on.

Each test plays one site of three that sends malformed metrics (ragged, deep or out-of-range
confusion matrices, inf, NaN, missing or unknown fields, strings for numbers) or text made to
fool a terminal, Markdown or HTML. The round completes with the other two sites, the hostile one
is named in the round line and the audit log, and nothing of its report reaches site_privacy,
state.json, report.txt or the model card.
"""

import json
import logging
import re

import flwr.compat.common.recorddict_compat as compat
import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import Code, EvaluateRes, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.supercore.task_identity import TaskIdentity

from common.audit import AuditLog, generate_key
from common.config import RunConfig
from common.updates import pack, unpack
from server.app import privacy_summary
from server.model_card import to_html, to_markdown, write_model_card
from server.run_dir import RunDir
from server.strategy import FedSiloStrategy

ENROLLED = {"1": "A", "2": "B", "3": "C"}
GOOD_FIT = {"records": 80, "eval_records": 20, "redactions": '{"EMAIL": 1, "NAME": 2}', "dp": True,
            "epsilon": 1.5, "delta": 1e-5, "budget": 8.0, "accountant": "prv", "noise_multiplier": 1.1,
            "sample_rate": 0.1, "steps": 10, "time_load": 0.1, "time_tokenise": 0.2, "time_train": 1.0}
# Terminal clear-screen, an OSC 8 hyperlink, a bell, a forged report line, HTML and a Markdown link.
HOSTILE = ("evil\x1b[2J\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\\x07\r\n== site forged ==\n"
           "<script>alert(1)</script> [x](javascript:alert(1)) | *bold* `code`")
CONTROL = [chr(c) for c in range(32) if chr(c) != "\n"] + ["\x7f", "\x9b"]
UNSET = object()


def strategy(tmp_path, secure=False, enrolled=ENROLLED):
    run = RunDir(tmp_path / "run")
    if enrolled is not None:
        (run.path / "sites.json").write_text(json.dumps(enrolled))
    generate_key(tmp_path / "audit.key")
    # round 1 carries updates here, not head statistics
    options = {"labels": "a,b", "rounds": 3, "secure-aggregation": secure, "head-init": "none"}
    if not secure:
        options["min-sites"] = 1
    s = FedSiloStrategy(RunConfig.from_dict(options), run, [np.zeros(2, dtype=np.float32)],
                        AuditLog(tmp_path / "audit.jsonl", tmp_path / "audit.key", "server"))
    s._fit_started.append(1)
    s.round_record = {"round": 1}
    return s


def fit(node, site, value=0.1, examples=80, **changes):
    metrics = {"site": site, **GOOD_FIT}
    for key, new in changes.items():
        if new is UNSET:
            metrics.pop(key)
        else:
            metrics[key] = new
    params = ndarrays_to_parameters(pack([np.full(2, value, np.float32)]))
    return GridClientProxy(node, grid=None, run_id=1), FitRes(Status(Code.OK, ""), params, examples, record(metrics))


def record(metrics):
    """The metrics as Flower hands them to the strategy: a ConfigRecord, where its types allow."""
    try:
        return ConfigRecord(metrics)
    except TypeError:
        return metrics


def evaluate(node, site, confusion="[[2, 0], [0, 2]]", examples=4, **extra):
    metrics = {"site": site, "confusion": confusion, "time_evaluate": 0.5, **extra}
    if confusion is UNSET:
        metrics.pop("confusion")
    return GridClientProxy(node, grid=None, run_id=1), EvaluateRes(Status(Code.OK, ""), 0.5, examples,
                                                                   record(metrics))


def audit_records(tmp_path, kind):
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    return [r["data"] for r in map(json.loads, lines) if r["kind"] == kind]


def round_lines(caplog):
    return [m for m in caplog.messages if m.startswith("round 1/")]


def resume(s):
    """A coordinator restarted after round 1: state.json loads and the strategy resumes."""
    s.checkpoint(1)
    state = s.run_dir.resume_point(s.cfg)
    resumed = FedSiloStrategy(s.cfg, s.run_dir, s.run_dir.load_round_weights(max(s.completed_rounds, default=0)),
                              s.audit, state)
    privacy_summary(resumed.site_privacy)  # every kept report makes its guarantee sentence
    return resumed


DEEP = "[" * 100_000 + "]" * 100_000
FIT_CASES = [  # (field named in the round line, B's changed metrics)
    ("epsilon", {"epsilon": float("inf")}),  # 1e400 on the wire
    ("epsilon", {"epsilon": float("nan")}),
    ("epsilon", {"epsilon": "3.0"}),
    ("epsilon", {"epsilon": -1.0}),
    ("epsilon", {"epsilon": UNSET}),  # dp true without epsilon
    ("delta", {"delta": 5.0}),
    ("delta", {"delta": UNSET}),
    ("accountant", {"accountant": "gdp"}),
    ("accountant", {"accountant": 3}),
    ("redactions", {"redactions": '["EMAIL"]'}),
    ("redactions", {"redactions": '{"EMAIL": "many"}'}),
    ("redactions", {"redactions": '{"EMAIL": -4}'}),
    ("redactions", {"redactions": '{"SECRET": 1}'}),
    ("redactions", {"redactions": 7}),
    ("redactions", {"redactions": '{"EMAIL": ' * 50_000 + "1" + "}" * 50_000}),
    ("redactions", {"redactions": '{"EMAIL": ' + "[" * 300 + "]" * 300 + "}"}),
    ("records", {"records": -1}),
    ("records", {"records": 10**30}),
    ("records", {"records": 80.5}),
    ("records", {"records": True}),
    ("records", {"records": UNSET}),
    ("eval_records", {"eval_records": "20"}),
    ("dp", {"dp": "yes"}),
    ("dp", {"dp": UNSET}),
    ("steps", {"steps": [1, 2]}),
    ("budget", {"budget": b"\x00"}),
    ("sample_rate", {"sample_rate": 1.5}),
    ("time_train", {"time_train": -1.0}),
    ("time_train", {"time_train": float("inf")}),
    ("train_loss", {"train_loss": float("-inf")}),
    ("device", {"device": "cuda:0 (NVIDIA H100)\x1b[2J"}),  # the kind only, never free text
    ("gpu_peak_mib", {"gpu_peak_mib": -1.0}),
    ("peak_rss_mib", {"peak_rss_mib": float("nan")}),
    ("ray_node", {"ray_node": "../../etc/passwd"}),
    ("injected", {"injected": 1}),
    ("num_examples", {"examples": -5}),
    ("num_examples", {"examples": 10**20}),
]


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secagg"])
@pytest.mark.parametrize("field, changes", FIT_CASES, ids=[f"{f}-{i}" for i, (f, _) in enumerate(FIT_CASES)])
def test_a_malformed_fit_report_leaves_the_site_out_not_the_round(tmp_path, caplog, field, changes, secure):
    caplog.set_level(logging.INFO, logger="flwr")
    s = strategy(tmp_path, secure=secure)
    changes = dict(changes)
    examples = changes.pop("examples", 80)
    # Plain: B's update (0.9) would pull the mean away from A's and C's 0.1. Under SecAgg+ every
    # reply carries the one revealed mean, in which B's update stays.
    hostile = fit(2, "B", 0.1 if secure else 0.9, examples, **changes)
    params, _ = s.aggregate_fit(1, [fit(1, "A"), hostile, fit(3, "C")], [])

    assert params is not None and s.completed_rounds == [1]
    np.testing.assert_allclose(unpack(parameters_to_ndarrays(params), s.shapes)[0], 0.1, rtol=1e-6)
    assert sorted(s.round_record["fit"]) == ["A", "C"]
    assert sorted(s.site_privacy) == ["A", "C"]
    named = [t for t in s.round_record["fit_failures"] if t.startswith(f"site B: malformed report ({field}: ")]
    assert len(named) == 1, s.round_record["fit_failures"]
    assert ("inside the secure sum" in named[0]) is secure
    [record] = audit_records(tmp_path, "malformed_report")
    assert record["site"] == "B" and record["field"] == field and record["stage"] == "fit"

    s.aggregate_evaluate(1, [evaluate(1, "A"), evaluate(3, "C")], [])  # metrics.jsonl, audit, state.json
    [line] = round_lines(caplog)
    assert f"left out: site B: malformed report ({field}: " in line and "epsilon A=1.50 C=1.50" in line
    assert sorted(audit_records(tmp_path, "round")[0]["participants"]) == ["A", "C"]
    assert sorted(resume(s).site_privacy) == ["A", "C"]


EVAL_CASES = [  # (B's confusion, B's num_examples, field named)
    ("[[1, 0], [0]]", 1, "confusion"),  # ragged
    ("[[1, 0, 0], [0, 1, 0], [0, 0, 1]]", 3, "confusion"),  # 3 x 3 in a 2-label run
    (DEEP, 4, "confusion"),  # nested 100,000 deep
    ("[[[[[[[[4]]]]]]]]", 4, "confusion"),  # deep but short
    ("[[-1, 0], [0, 5]]", 4, "confusion"),
    ("[[1.5, 0], [0, 2.5]]", 4, "confusion"),
    ("[[1e400, 0], [0, 1]]", 1, "confusion"),
    ("[[100000000000000000000, 0], [0, 1]]", 1, "confusion"),
    ('{"a": 1}', 1, "confusion"),
    ("[[2, 0], [0, 2]", 4, "confusion"),  # not JSON
    ([1, 2, 3], 6, "confusion"),  # a list on the wire, not a string
    ("[[2, 0], [0, 2]]", 5, "confusion"),  # counts 4 records, the reply says 5
    (UNSET, 4, "confusion"),  # 4 records evaluated, no matrix
    ("[[2, 0], [0, 2]]", -4, "num_examples"),
]


@pytest.mark.parametrize("confusion, examples, field", EVAL_CASES, ids=[str(i) for i in range(len(EVAL_CASES))])
def test_a_malformed_evaluation_report_is_left_out(tmp_path, caplog, confusion, examples, field):
    caplog.set_level(logging.INFO, logger="flwr")
    s = strategy(tmp_path)
    s.aggregate_fit(1, [fit(1, "A"), fit(2, "B"), fit(3, "C")], [])
    results = [evaluate(1, "A"), evaluate(2, "B", confusion, examples), evaluate(3, "C", "[[1, 1], [0, 2]]")]
    loss, metrics = s.aggregate_evaluate(1, results, [])

    assert loss == 0.5 and metrics["accuracy"] == pytest.approx(7 / 8)
    saved = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert sorted(saved["site_accuracy"]) == ["A", "C"] and saved["eval_examples"] == 8
    assert any(t.startswith(f"site B: malformed report ({field}: ") for t in saved["eval_failures"]), saved
    [line] = round_lines(caplog)
    assert f"left out: site B: malformed report ({field}: " in line
    [record] = audit_records(tmp_path, "malformed_report")
    assert record["site"] == "B" and record["stage"] == "evaluate" and record["field"] == field
    assert sorted(resume(s).site_privacy) == ["A", "B", "C"]


@pytest.mark.parametrize("case", ["wrong type", "unknown key", "time"])
def test_other_malformed_evaluation_fields(tmp_path, case):
    s = strategy(tmp_path)
    hostile = {"wrong type": evaluate(2, 7), "unknown key": evaluate(2, "B", extra="x"),
               "time": evaluate(2, "B", time_load="slow")}[case]
    s.aggregate_evaluate(1, [evaluate(1, "A"), hostile], [])
    saved = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert sorted(saved["site_accuracy"]) == ["A"]
    assert any("malformed report" in t for t in saved["eval_failures"]), saved


def test_a_checkpoint_with_malformed_site_reports_resumes_without_them(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="flwr")
    s = strategy(tmp_path)
    s.aggregate_fit(1, [fit(1, "A")], [])
    s.checkpoint(1)
    state = json.loads(s.run_dir.state_path.read_text())
    good = state["site_privacy"]["A"]
    state["site_privacy"].update({  # what an older version may have saved from hostile sites
        "B": {"dp": True, "records": 80}, "C": {**good, "epsilon": "1e400"}, "D": {**good, "accountant": "x"},
        "E": {**good, "redactions": {"EMAIL": 1}}, "F": {**good, "records": -3}, "G": "not a report",
        "H\x1b[2J<script>": good})
    s.run_dir.state_path.write_text(json.dumps(state))

    resumed = resume_from_disk(s)
    assert sorted(resumed.site_privacy) == ["A"] and resumed.completed_rounds == [1]
    privacy_summary(resumed.site_privacy)
    warned = [m for m in caplog.messages if "state.json" in m and "dropped" in m]
    assert len(warned) == 7 and not any("\x1b" in m for m in warned)
    # a site_privacy that is not a mapping at all
    s.run_dir.state_path.write_text(json.dumps({**state, "site_privacy": ["A"]}))
    assert resume_from_disk(s).site_privacy == {}


def resume_from_disk(s):
    return FedSiloStrategy(s.cfg, s.run_dir, s.run_dir.load_round_weights(1), s.audit,
                           s.run_dir.resume_point(s.cfg))


def finish_like_the_app(s):
    """What server/app.py writes after the rounds: report.txt's privacy section, the model card."""
    s.checkpoint(1)
    summary = {"run_id": 1, "rounds_planned": 1, "rounds_completed": s.completed_rounds,
               "rounds_failed": {str(k): v for k, v in s.failed_rounds.items()},
               "privacy": privacy_summary(s.site_privacy), "audit_log": str(s.audit.path), "audit_head": s.audit.head}
    s.run_dir.append_report_section("Privacy (what each site reported of itself)", list(summary["privacy"].values()))
    write_model_card(s.run_dir.path, s.cfg, summary, s.site_privacy)
    return {name: (s.run_dir.path / name).read_text() for name in ("report.txt", "MODEL_CARD.md", "model_card.html")}


def assert_inert(text: str, where: str, markup: bool = True):
    """No control character; with `markup`, no HTML tag, Markdown link or forged report line."""
    assert not [c for c in CONTROL if c in text], f"control characters in {where}"
    if markup:  # a Markdown link needs an unescaped "](": an escaped \\] is a bracket
        assert "<script>" not in text, where
        assert not (where.endswith(".md") and re.search(r"(?<!\\)\]\(javascript:", text)), where
        assert not any(line.startswith("== site forged") for line in text.splitlines()), where


def test_hostile_text_reaches_no_terminal_report_or_card_unescaped(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="flwr")
    s = strategy(tmp_path, enrolled=None)  # no enrolment: the names are the sites' own word
    failed = (GridClientProxy(4, grid=None, run_id=1), FitRes(Status(Code.OK, HOSTILE), None, 0, {}))
    crashed = Exception(Error(code=0, reason=HOSTILE * 50))
    results = [fit(1, "A"), fit(2, HOSTILE), fit(3, "C", redactions=json.dumps({HOSTILE: 1, "EMAIL": 2}))]
    s.aggregate_fit(1, results, [failed, crashed])
    evaluation = [evaluate(1, "A"), evaluate(2, HOSTILE), evaluate(3, "C")]
    s.aggregate_evaluate(1, evaluation, [crashed])
    assert sorted(s.round_record["site_accuracy"]) == ["A", "C"]

    [line] = round_lines(caplog)
    assert_inert(line, "the round line", markup=False)  # a site's own error text is shown, escaped
    assert "\n" not in line and "left out: site node 2: malformed report (site: " in line
    assert "left out: site C: malformed report (redactions: unknown PII type)" in line
    assert "\\x1b[2J" in line  # the failure reason, visible but inert
    assert all(len(t) <= 300 for t in s.round_record["fit_failures"] + s.round_record["eval_failures"])
    for message in caplog.messages:
        assert_inert(message.replace("\n", " "), "the coordinator's log", markup=False)
    for name, text in finish_like_the_app(s).items():
        assert_inert(text, name)


def test_the_card_escapes_every_string_for_its_medium():
    sections = [("Sites", (["site", "redactions"], [[HOSTILE, "NAME 1"]])), ("Privacy", [HOSTILE]),
                ("Note", HOSTILE)]
    md, page = to_markdown(sections), to_html(sections)
    assert_inert(md, "MODEL_CARD.md")
    assert_inert(page, "model_card.html")
    assert "\\<script\\>" in md and "\\](javascript:" in md and "\\|" in md and "\\*bold\\*" in md
    row = next(line for line in md.splitlines() if line.startswith("| evil"))
    assert row.count(" | ") == 1 and row.endswith("| NAME 1 |")  # one row, two cells
    assert "&lt;script&gt;" in page and "\\x1b[2J" in page


class OneShotGrid:
    """A Grid whose sites answer at once, with whatever `answer(instruction)` makes."""

    def __init__(self, answer):
        self.answer, self.replies = answer, {}

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id  # as the SuperLink's Grid does
            self.replies[msg.metadata.message_id] = self.answer(msg)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(mid) for mid in list(message_ids) if mid in self.replies]


def test_a_reply_flower_cannot_read_is_left_out_before_flower_reads_it(tmp_path, caplog):
    """Some replies never reach the strategy: Flower's compat layer raises on them first (a
    list-valued metric, a missing record), which would end the ServerApp."""
    from server.app import BoundedGrid

    caplog.set_level(logging.INFO, logger="flwr")
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as in a ServerApp
    s = strategy(tmp_path)
    params = ndarrays_to_parameters(pack([np.full(2, 0.1, np.float32)]))
    contents = {
        1: compat.fitres_to_recorddict(FitRes(Status(Code.OK, ""), params, 80, {"site": "A", **GOOD_FIT}), True),
        2: compat.fitres_to_recorddict(FitRes(Status(Code.OK, ""), params, 80, {"site": "B", **GOOD_FIT,
                                                                              "epsilon": [1.0, 2.0]}), True),
        3: RecordDict(),  # no fitres at all
        4: compat.fitres_to_recorddict(FitRes(Status(Code.OK, ""), params, 80, {"site": "D", **GOOD_FIT}), True),
    }
    contents[4].metric_records["fitres.num_examples"] = MetricRecord({"num_examples": 80.5})
    for node in (2, 3):
        with pytest.raises((TypeError, KeyError)):  # what the workflow would have met
            compat.recorddict_to_fitres(contents[node], keep_input=True)
    grid = BoundedGrid(OneShotGrid(lambda msg: Message(contents[msg.metadata.dst_node_id], reply_to=msg)), 5.0,
                       s, secure=False)
    asks = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN) for node in contents]
    replies = grid.send_and_receive(asks)

    assert [r.metadata.src_node_id for r in replies] == [1]
    results = [(GridClientProxy(r.metadata.src_node_id, grid=None, run_id=1),
                compat.recorddict_to_fitres(r.content, keep_input=False)) for r in replies]
    params, _ = s.aggregate_fit(1, results, [])
    assert params is not None and sorted(s.round_record["fit"]) == ["A"]
    failures = s.round_record["fit_failures"]
    for name in ("B", "C", "node 4 (not enrolled)"):
        assert any(t.startswith(f"site {name}: malformed report (reply: ") for t in failures), failures
    assert len(audit_records(tmp_path, "malformed_report")) == 3

    # evaluation: an honest reply passes, a list-valued metric does not
    honest = compat.evaluateres_to_recorddict(evaluate(1, "A")[1])
    hostile = compat.evaluateres_to_recorddict(evaluate(2, "B", time_load=[1.0, 2.0])[1])
    answers = {1: honest, 2: hostile}
    grid = BoundedGrid(OneShotGrid(lambda msg: Message(answers[msg.metadata.dst_node_id], reply_to=msg)), 5.0,
                       s, secure=True)  # evaluation is never secure-aggregated
    asks = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.EVALUATE) for node in answers]
    replies = grid.send_and_receive(asks)
    assert [r.metadata.src_node_id for r in replies] == [1]
    results = [(GridClientProxy(1, grid=None, run_id=1), compat.recorddict_to_evaluateres(replies[0].content))]
    s.aggregate_evaluate(1, results, [])
    saved = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert list(saved["site_accuracy"]) == ["A"]
    assert [t for t in saved["eval_failures"] if t.startswith("site B: malformed report (reply: ")], saved
