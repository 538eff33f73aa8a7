"""What leaves a site: run the real ClientApp on Flower messages and inspect every reply.

No raw text, no token ids, no per-example data: only the trainable weights' changes (packed in
one float vector) and the few scalar fields the README lists.
"""

import json

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.common import EvaluateIns, FitIns, ndarrays_to_parameters, parameters_to_ndarrays
import flwr.compat.common.recorddict_compat as compat
from flwr.app.message_type import MessageType

from flwr.supercore.task_identity import TaskIdentity

from client.app import app
from client.site import site_data
from common.config import RunConfig
from common.model import build_model, get_weights, load_tokenizer
from common.updates import pack, unpack
from tests.helpers import LABELS

PII_ROW = "Dear bank, my name is Mary Johnson, email mary.johnson@example.com, my card was declined."

# Every metric a site may send, as the README's "What leaves a site" table lists them.
FIT_FIELDS = {"site", "records", "redactions", "dp", "epsilon", "delta", "budget", "accountant",
              "noise_multiplier", "sample_rate", "steps", "train_loss",
              "time_load", "time_tokenise", "time_train"}
EVAL_FIELDS = {"site", "confusion", "time_load", "time_tokenise", "time_evaluate"}


def make_context(cfg, tmp_path, data):
    return Context(run_id=1, node_id=7, state=RecordDict(), run_config=cfg.to_flat(),
                   node_config={"site": "A", "data-path": str(data), "dp": True,
                                "ledger": str(tmp_path / "ledger.json"),
                                "audit-log": str(tmp_path / "audit.jsonl"), "audit-key": str(tmp_path / "audit.key")})


def send(msg_type, content, ctx):
    # What Flower's runtime sets in a ClientApp process before it builds or answers messages.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1
    msg = Message(content=content, dst_node_id=7, message_type=msg_type)
    return app(msg, ctx)


def test_replies_carry_weights_and_aggregates_only(tiny_model, demo_dir, tmp_path):
    data = tmp_path / "site.tsv"
    rows = (demo_dir / "site-A.tsv").read_text().splitlines()
    data.write_text("\n".join(rows + [f"{PII_ROW}\tcard"]) + "\n")
    cfg = RunConfig.from_dict({"model": str(tiny_model), "labels": LABELS, "rounds": 2, "batch-size": 32})
    ctx = make_context(cfg, tmp_path, data)
    initial = get_weights(build_model(cfg))
    texts = [r.split("\t")[0] for r in rows[1:]] + [PII_ROW]
    token_ids = load_tokenizer(cfg.model)(texts)["input_ids"]

    fit = send(MessageType.TRAIN, compat.fitins_to_recorddict(
        FitIns(ndarrays_to_parameters(pack(initial)), {"server-round": 1}), keep_input=True), ctx)
    ev = send(MessageType.EVALUATE, compat.evaluateins_to_recorddict(
        EvaluateIns(ndarrays_to_parameters(pack(initial)), {"server-round": 1}), keep_input=True), ctx)
    assert not fit.has_error() and not ev.has_error()

    fitres = compat.recorddict_to_fitres(fit.content, keep_input=True)
    sent = parameters_to_ndarrays(fitres.parameters)
    # one packed float32 vector: exactly the trainable tensors' changes, nothing else
    assert len(sent) == 1 and sent[0].dtype == np.float32 and sent[0].size == sum(w.size for w in initial)
    assert [a.shape for a in unpack(sent, [w.shape for w in initial])] == [w.shape for w in initial]
    assert set(fitres.metrics) <= FIT_FIELDS and fitres.metrics["dp"] is True
    assert "train_loss" not in fitres.metrics  # not DP-protected: stays at the site
    assert json.loads(fitres.metrics["redactions"]) == {"EMAIL": 1, "NAME": 1}

    evres = compat.recorddict_to_evaluateres(ev.content)
    assert set(evres.metrics) <= EVAL_FIELDS
    confusion = np.array(json.loads(evres.metrics["confusion"]))
    assert confusion.shape == (4, 4) and confusion.sum() == evres.num_examples

    # Nothing in any reply spells out a record, a piece of one, or its token ids.
    blob = json.dumps({k: str(v) for k, v in {**fitres.metrics, **evres.metrics}.items()})
    for text in texts:
        for i in range(0, max(1, len(text.split()) - 2)):
            assert " ".join(text.split()[i:i + 3]) not in blob
    for reply in (fit, ev):
        for record in reply.content.config_records.values():
            for value in record.values():
                assert not isinstance(value, list) or not any(
                    isinstance(v, int) and not isinstance(v, bool) for v in value), value
    sent_bytes = b"".join(a.tobytes() for a in sent)
    assert np.asarray(token_ids[0], dtype=np.int64).tobytes() not in sent_bytes


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
