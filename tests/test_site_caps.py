"""A hostile coordinator against the real ClientApp: the site's own caps hold, and nothing the site
answers quotes its data.

Each test sends TRAIN messages to `client.app.app` in process, as the SuperNode would hand them
over, with the node config fl-client builds (client/cli.py), and reads only what would go back
to the server (the reply) and what the site keeps (its ledger, its console).
"""

import json

import flwr.compat.common.recorddict_compat as compat
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import EvaluateIns, FitIns, ndarrays_to_parameters
from flwr.supercore.task_identity import TaskIdentity

from client import site_round
from client.app import app
from client.site_limits import CAPS, check_run
from common.config import RunConfig
from common.data import MAX_JSON_DEPTH, read_records
from common.errors import FedSiloError
from common.model import build_model, get_weights
from common.updates import pack

LABELS = "account,card"
ROWS = "".join(f"my card number {i} was declined\tcard\nopen an account for me {i}\taccount\n" for i in range(50))
_weights: dict[str, list] = {}  # the initial weights of each model config, built once


def site_file(tmp_path, rows=ROWS):
    data = tmp_path / "site.tsv"
    data.write_text("text\tlabel\n" + rows)
    return data


def node_config(tmp_path, data, tiny_model, dp=True, **extra):
    """fl-client's node config: a real site (it names its data file) that allows the tiny model."""
    return {"site": "A", "data-path": str(data), "dp": dp, "target-epsilon": 1.0, "privacy-budget": 50.0,
            "ledger": str(tmp_path / "ledger.json"), "audit-log": str(tmp_path / "audit.jsonl"),
            "audit-key": str(tmp_path / "audit.key"), "allow-unmasked-updates": True,
            "allow-model": str(tiny_model), **extra}


def run_config(tiny_model, **options):
    return RunConfig.from_dict({"model": str(tiny_model), "labels": LABELS, "rounds": 1, "batch-size": 32,
                                "secure-aggregation": False, "min-sites": 1, **options}).to_flat()


def fit(flat_cfg: dict, node_cfg: dict, server_round: int = 1, run_id: int = 1, weights_model=None) -> Message:
    """One training message of a plain round (the site's operator allowed those), as the server sends it:
    the weights of the run's model (or of `weights_model`, where the run names a model that is not one)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 7, server_round
    ctx = Context(run_id=run_id, node_id=7, state=RecordDict(), run_config=dict(flat_cfg), node_config=node_cfg)
    model_cfg = {**flat_cfg, **({"model": str(weights_model)} if weights_model else {})}
    model_key = json.dumps({k: model_cfg[k] for k in ("model", "labels", "trainable", "lora-r", "lora-targets")})
    if model_key not in _weights:
        _weights[model_key] = get_weights(build_model(RunConfig.from_dict(model_cfg)))
    content = compat.fitins_to_recorddict(
        FitIns(ndarrays_to_parameters(pack(_weights[model_key])), {"server-round": server_round}), keep_input=True)
    return app(Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN), ctx)


def ledger_charges(tmp_path) -> list[dict]:
    path = tmp_path / "ledger.json"
    return json.loads(path.read_text())["entries"] if path.exists() else []


def restart_site(monkeypatch):
    """A restarted fl-client (or site worker): nothing of the run is kept in memory."""
    monkeypatch.setattr(site_round, "_current", None)
    monkeypatch.setattr(site_round, "_run", None)


def test_a_one_round_run_trains_once_however_many_fits_the_server_sends(tiny_model, tmp_path, monkeypatch):
    # Attack 4: noise calibrated for 1 round at epsilon 1, then 29 more fits, each spending the budget again.
    data = site_file(tmp_path)
    cfg, node = run_config(tiny_model, rounds=1), node_config(tmp_path, data, tiny_model)
    first = fit(cfg, node)
    assert not first.has_error(), first.error
    refused = []
    for server_round in range(2, 31):
        if server_round == 3:
            restart_site(monkeypatch)  # the count survives a restart: it is read from the ledger
        reply = fit(cfg, node, server_round)
        assert reply.has_error() and not reply.has_content()
        refused.append(reply.error.reason)
    assert set(refused) == {"site A refuses another fit: it trained 1 of the run's 1 planned round(s) already, "
                            "and its noise was calibrated for that many"}
    charges = ledger_charges(tmp_path)
    assert [(c["run_id"], c["round"]) for c in charges] == [("1", 1)]
    assert charges[0]["epsilon_total"] <= 1.0 + 1e-6  # the run's target, not 30 times it
    # The site's own audit log records every refusal; another run is a new count.
    assert (tmp_path / "audit.jsonl").read_text().count('"refusal"') == 29
    assert not fit(cfg, node, 1, run_id=2).has_error()
    assert len(ledger_charges(tmp_path)) == 2


def test_a_site_without_dp_counts_its_fits_in_a_file_next_to_its_data(tiny_model, tmp_path, monkeypatch):
    data = site_file(tmp_path)
    cfg, node = run_config(tiny_model, rounds=2), node_config(tmp_path, data, tiny_model, dp=False)
    assert not fit(cfg, node, 1).has_error()
    restart_site(monkeypatch)
    assert not fit(cfg, node, 2).has_error()
    restart_site(monkeypatch)
    again = fit(cfg, node, 3)
    assert again.has_error() and "trained 2 of the run's 2 planned round(s)" in again.error.reason
    assert json.loads((tmp_path / "site.tsv.fits.json").read_text())["runs"] == {"1": 2}


def test_a_site_evaluates_at_most_once_per_planned_round(tiny_model, tmp_path, monkeypatch):
    """The server picks the model a site evaluates, so each evaluation can answer a question of its
    choosing about the held-out records (in confusion counts, without DP): a site answers at most
    the run's planned rounds of them, across restarts."""
    data = site_file(tmp_path)
    cfg, node = run_config(tiny_model, rounds=2), node_config(tmp_path, data, tiny_model, dp=False)
    fit(cfg, node)  # builds the weights of this config
    weights = next(iter(_weights.values()))

    def evaluate(server_round):
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 100 + server_round
        ctx = Context(run_id=1, node_id=7, state=RecordDict(), run_config=dict(cfg), node_config=node)
        content = compat.evaluateins_to_recorddict(
            EvaluateIns(ndarrays_to_parameters(pack(weights)), {"server-round": server_round}), keep_input=True)
        return app(Message(content=content, dst_node_id=7, message_type=MessageType.EVALUATE), ctx)

    assert not evaluate(1).has_error()
    restart_site(monkeypatch)
    assert not evaluate(2).has_error()
    probes = [evaluate(r) for r in range(3, 8)]
    assert all(p.has_error() and not p.has_content() for p in probes)
    assert "refuses another evaluation: it answered 2 of the run's 2 planned round(s)" in probes[0].error.reason


CAP_CASES = [  # (run option, a value above the site's default cap, the fl-client option named)
    ("rounds", 101, "--max-rounds 100"),
    ("local-epochs", 11, "--max-local-epochs 10"),
    ("batch-size", 1025, "--max-batch-size 1024"),
    ("max-length", 513, "--max-length 512"),
    ("labels", ",".join(["account", "card"] + [f"class-{i}" for i in range(999)]), "--max-labels 1000"),
]


@pytest.mark.parametrize("option, value, named", CAP_CASES, ids=[c[0] for c in CAP_CASES])
def test_a_run_asking_for_more_than_the_site_allows_is_refused_before_anything_is_spent(
        tiny_model, tmp_path, option, value, named):
    data = site_file(tmp_path)
    reply = fit(run_config(tiny_model, **{option: value}), node_config(tmp_path, data, tiny_model))
    assert reply.has_error() and not reply.has_content()
    assert reply.error.reason.startswith("site A refuses the run: ") and reply.error.reason.endswith(named)
    assert ledger_charges(tmp_path) == [] and not (tmp_path / "ledger.json").exists()  # nothing charged


def test_a_stricter_site_sets_its_own_caps_and_the_defaults_cover_every_cap(tiny_model, tmp_path):
    assert {cap.key for cap in CAPS} == {named.split()[0][2:] for *_, named in CAP_CASES}
    data = site_file(tmp_path)
    reply = fit(run_config(tiny_model, rounds=6), node_config(tmp_path, data, tiny_model, **{"max-rounds": 5}))
    assert reply.has_error()
    assert reply.error.reason == "site A refuses the run: rounds 6 is above this site's --max-rounds 5"
    assert not (tmp_path / "ledger.json").exists()
    # A simulated site belongs to the coordinator: no caps there.
    check_run(RunConfig.from_dict({"labels": LABELS, "rounds": 10_000}).to_flat(),
              {"partition-id": 0, "num-partitions": 2})


def test_the_model_option_cannot_probe_the_sites_file_system(tiny_model, tmp_path, capsys):
    # Attack 8: an existing folder, a file that is not JSON and a missing path once answered differently.
    data = site_file(tmp_path)
    folder = tmp_path / "patients"
    folder.mkdir()
    not_json = tmp_path / "notes.txt"
    not_json.write_text("Mary Johnson, stage IV\n")
    probes = [folder, not_json, tmp_path / "nothing-here", folder / "config.json"]
    answers = []
    for path in probes:
        reply = fit(run_config(tiny_model, model=str(path)), node_config(tmp_path, data, tiny_model),
                    weights_model=tiny_model)
        assert reply.has_error()
        answers.append(reply.error.reason.replace(str(path), "PATH"))
    assert set(answers) == {"site A refuses model 'PATH': not on this site's --allow-model list"}
    assert "Mary" not in capsys.readouterr().err
    # The embedded model (an empty `model`) and the allowed path pass the check.
    check_run(run_config(tiny_model, model=""), node_config(tmp_path, data, tiny_model))
    check_run(run_config(tiny_model, model=str(tiny_model) + "/"), node_config(tmp_path, data, tiny_model))


def test_a_crafted_label_set_learns_how_many_records_not_which_labels(tiny_model, tmp_path, capsys):
    # Attack 5: the run's label set leaves out the site's labels; the error once quoted them.
    secret = ["HIV-positive", "oncology:stage-IV", "hepatitis-C"]
    rows = "".join(f"patient note {i}\t{secret[i % 3]}\n" for i in range(30)) + "a card note\tcard\n"
    data = site_file(tmp_path, rows)
    reply = fit(run_config(tiny_model), node_config(tmp_path, data, tiny_model))
    assert reply.has_error()
    assert reply.error.reason == "site A: some records have labels outside the run's label set"  # no count either
    assert not any(label.lower() in reply.error.reason.lower() for label in secret + ["HIV", "oncology"])
    console = capsys.readouterr().err  # the site's operator still learns which
    assert "'HIV-positive'" in console and "not sent" in console
    assert not ledger_charges(tmp_path)


def test_a_broken_data_file_is_named_on_the_sites_console_only(tiny_model, tmp_path, capsys):
    data = tmp_path / "ward-7-patients.jsonl"
    data.write_text('{"text": "Mary Johnson was admitted", "diagnosis": "card"}\n')
    reply = fit(run_config(tiny_model), node_config(tmp_path, data, tiny_model))
    assert reply.has_error() and reply.error.reason == "site A: its data file cannot be read"
    console = capsys.readouterr().err
    assert "ward-7-patients.jsonl:1: missing column 'label' (found: text, diagnosis)" in console


@pytest.mark.parametrize("line, problem", [
    ('{"text": ' + "[" * 100_000 + "]" * 100_000 + ', "label": "card"}', f"nested deeper than {MAX_JSON_DEPTH}"),
    ('{"text": "a", "label": ' + "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1) + "}",
     f"nested deeper than {MAX_JSON_DEPTH}"),
    ('{"text": "a", "label": ' + "7" * 5000 + "}", "invalid JSON"),
], ids=["100000-deep", "just-too-deep", "5000-digit-number"])
def test_a_hostile_jsonl_line_is_one_clean_error_naming_its_line(tmp_path, line, problem):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "fine", "label": "card"}\n' + line + "\n")
    with pytest.raises(FedSiloError) as caught:
        read_records(data)
    message = str(caught.value)
    assert message.startswith(f"{data}:2: ") and problem in message and "\n" not in message and len(message) < 300


def test_brackets_inside_strings_are_text_not_nesting(tmp_path):
    text = "[" * 50 + '{ \\" ]]] ' + "}" * 50
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": text, "label": "card", "meta": {"a": [[1]]}}) + "\n")
    assert read_records(data).texts == [text]
