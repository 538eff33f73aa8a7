"""Watching a run: TensorBoard and MLflow (read back by their own readers), `fl-server status` on a
live, a killed and a finished run, report.html in a real headless browser, fl-sim's quiet output."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from common.launch import free_port
from tests.helpers import LABELS, assert_clean_error, run_cli, site_file, start, stop_all, wait_for_text

@pytest.fixture(scope="module")
def tracked_run(tiny_model, demo_dir, tmp_path_factory):
    """A finished two-round fl-sim run (DP on) with --tensorboard and --mlflow file:."""
    tmp = tmp_path_factory.mktemp("tracked")
    proc = run_cli("fl-sim", "--sites", 3, "--data", demo_dir / "all.tsv", "--model", tiny_model, "--rounds", 2,
                   "--batch-size", 32, "--run-dir", tmp / "run", "--tensorboard", tmp / "tb",
                   "--mlflow", f"file:{tmp / 'mlruns'}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, proc


def metrics_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_trackers_hold_every_round_as_their_own_readers_see_it(tracked_run, monkeypatch):
    tmp, proc = tracked_run
    rounds = metrics_of(tmp / "run")
    assert [r["round"] for r in rounds] == [1, 2]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp / "tb"))
    events.Reload()
    for key, field in (("federation/accuracy", "accuracy"), ("federation/macro_f1", "macro_f1")):
        got = [(s.step, s.value) for s in events.Scalars(key)]
        assert [step for step, _ in got] == [1, 2]
        assert [v for _, v in got] == pytest.approx([r[field] for r in rounds], abs=1e-6)
    assert [s.value for s in events.Scalars("epsilon/sim-0")] == pytest.approx(
        [r["fit"]["sim-0"]["epsilon"] for r in rounds], abs=1e-5)

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{tmp / 'mlruns'}")
    run_id = json.loads((tmp / "run" / "tracking.json").read_text())["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    history = client.get_metric_history(run_id, "federation/accuracy")
    assert [(m.step, m.value) for m in history] == [(r["round"], r["accuracy"]) for r in rounds]
    for site in ("sim-0", "sim-1", "sim-2"):
        assert [m.value for m in client.get_metric_history(run_id, f"site/{site}/accuracy")] == [
            r["site_accuracy"][site] for r in rounds]
        assert client.get_metric_history(run_id, f"epsilon/{site}")[-1].value == rounds[-1]["fit"][site]["epsilon"]
    config = json.loads((tmp / "run" / "config.json").read_text())
    assert run.data.params["rounds"] == "2" and run.data.params["labels"] == ",".join(config["labels"])
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"MODEL_CARD.md", "report.html"} <= artifacts
    card = Path(client.download_artifacts(run_id, "MODEL_CARD.md", str(tmp / "download")))
    assert card.read_text() == (tmp / "run" / "MODEL_CARD.md").read_text()


def test_fl_sim_shows_round_lines_not_ray_and_flower_chatter(tracked_run):
    tmp, proc = tracked_run
    assert "round 1/2 | accuracy" in proc.stdout and "round 2/2 | accuracy" in proc.stdout
    assert "== federation" in proc.stdout
    for noise in ("ClientAppActor", "Starting Flower Simulation", "FutureWarning", "[SUMMARY]"):
        assert noise not in proc.stdout, noise
    log = (tmp / "run" / "logs" / "serverapp.log").read_text(errors="replace")
    assert "ClientAppActor" in log and "Starting Flower Simulation" in log  # kept, in the log


def test_status_of_a_finished_run(tracked_run):
    tmp, _ = tracked_run
    rounds = metrics_of(tmp / "run")
    proc = run_cli("fl-server", "status", tmp / "run")
    assert proc.returncode == 0, proc.stderr
    assert "FINISHED" in proc.stdout and "rounds: 2 of 2 completed" in proc.stdout
    eps = rounds[-1]["fit"]["sim-1"]["epsilon"]
    assert f"sim-1={eps:.2f}" in proc.stdout and "last failure: none" in proc.stdout
    as_json = json.loads(run_cli("fl-server", "status", tmp / "run", "--json").stdout)
    assert as_json["state"] == "finished" and as_json["rounds_completed"] == [1, 2]
    assert as_json["epsilon"]["sim-1"] == eps


def test_status_and_report_refuse_what_is_no_run(tmp_path):
    assert_clean_error(run_cli("fl-server", "status", tmp_path / "nothing"), "not a FedSilo run directory")
    assert_clean_error(run_cli("fl-server", "report", tmp_path), "not a FedSilo run directory")
    (tmp_path / "config.json").write_text("{broken")
    assert_clean_error(run_cli("fl-server", "status", tmp_path), "cannot read")


def test_a_tracking_target_that_cannot_take_the_run_stops_it_before_it_starts(tiny_model, demo_dir, tmp_path):
    run_dir = tmp_path / "run"
    common = ["--sites", 2, "--data", demo_dir / "all.tsv", "--model", tiny_model, "--rounds", 1, "--run-dir", run_dir]
    started = time.monotonic()
    proc = run_cli("fl-sim", *common, "--mlflow", f"http://127.0.0.1:{free_port()}", timeout=120)
    assert_clean_error(proc, "--mlflow")
    assert time.monotonic() - started < 90 and not run_dir.exists()
    (tmp_path / "file").write_text("")
    assert_clean_error(run_cli("fl-sim", *common, "--tensorboard", tmp_path / "file" / "tb"), "--tensorboard")
    assert not run_dir.exists()


def test_a_tracker_that_fails_mid_run_costs_a_warning_not_the_run(tracked_run, tmp_path, capsys):
    from server.tracking import RunFollower

    tmp, _ = tracked_run
    run_dir = tmp_path / "run"
    shutil.copytree(tmp / "run", run_dir)
    (run_dir / "tracking.json").unlink()
    (run_dir / "report.html").unlink()
    store = tmp_path / "mlruns"
    follower = RunFollower(run_dir, None, f"file:{store}")
    shutil.rmtree(store)
    store.write_text("not a folder any more")  # the store breaks after the run started
    follower.poll()
    follower.finish("ok")
    err = capsys.readouterr().err
    assert err.count("warning: MLflow failed") == 1, err
    assert (run_dir / "report.html").is_file()  # everything else went on


# ------------------------------------------------------------------ report.html in a real browser (tests/conftest.py)
def test_report_html_renders_its_plots_in_a_browser(tracked_run, browser):
    tmp, _ = tracked_run
    page = tmp / "run" / "report.html"
    browser.get(page.as_uri())
    plots = browser.find_elements("css selector", "img.plot")
    titles = [p.get_attribute("alt") for p in plots]
    assert len(plots) == 4, titles
    for wanted in ("Accuracy and macro-F1 per round", "Accuracy per site", "Privacy spent per site", "Per-class F1"):
        assert any(t.startswith(wanted) for t in titles), titles
    for plot in plots:  # decoded by the browser, drawn at a real size
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", plot) > 200
        assert plot.size["width"] > 200 and plot.size["height"] > 100
    assert "FINISHED" in browser.find_element("id", "status").text
    rows = browser.find_elements("css selector", "#rounds tr")
    assert len(rows) == 3  # a header and two rounds
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_a_hostile_site_name_is_text_in_the_report_never_markup(tracked_run, browser, tmp_path):
    from server.html_report import write_report
    from server.run_status import RunView

    tmp, _ = tracked_run
    run_dir = tmp_path / "run"
    shutil.copytree(tmp / "run", run_dir)
    hostile = '<img src=x onerror="document.title=\'owned\'"><script>document.title="owned"</script>'
    lines = metrics_of(run_dir)
    for record in lines:
        record["fit"][hostile] = record["fit"].pop("sim-0")
        record["site_accuracy"][hostile] = record["site_accuracy"].pop("sim-0")
        record["fit_failures"] = [f"{hostile} sent garbage"]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    write_report(RunView(run_dir))
    browser.get((run_dir / "report.html").as_uri())
    assert browser.title.startswith("FedSilo run report")
    assert browser.find_elements("css selector", "script") == []
    assert len(browser.find_elements("css selector", "img")) == 4  # the plots only
    assert hostile in browser.find_element("id", "rounds").text  # shown as the text it is


# ------------------------------------------------------------------ a live deployment run
@pytest.mark.slow
def test_status_follows_a_live_run_then_a_killed_one(tiny_model, demo_dir, tmp_path):
    port, run_dir = free_port(), tmp_path / "run"
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("server", "A", "B")}
    server = start("fl-server", "--insecure", "--port", port, "--run-dir", run_dir, "--labels", LABELS,
                   "--model", tiny_model, "--rounds", 3, "--min-sites", 2, "--no-secure-aggregation",
                   "--batch-size", 32, "--round-timeout", 300, log=logs["server"])
    sites = []

    def site(name):
        return start("fl-client", "--site", name, "--server", f"127.0.0.1:{port}", "--insecure", "--no-dp",
                     "--data", site_file(demo_dir, name, tmp_path), "--allow-unmasked-updates",
                     "--allow-model", tiny_model, log=logs[name])

    def status_until(ok, what, timeout=240):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = run_cli("fl-server", "status", run_dir, "--json")
            if proc.returncode == 0 and ok(json.loads(proc.stdout)):
                return json.loads(proc.stdout), run_cli("fl-server", "status", run_dir).stdout
            assert server.poll() is None or what == "stopped", (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(1)
        raise AssertionError(f"status never showed {what}: {proc.stdout} {proc.stderr}")

    try:
        wait_for_text(tmp_path / "server.log", "waiting for", server, timeout=120)
        sites.append(site("A"))
        state, text = status_until(lambda s: s["state"] == "running" and s["live"]["sites_connected"] == 1,
                                   "one site connected")
        assert state["live"]["phase"] == "waiting for sites" and state["rounds_completed"] == []
        assert "RUNNING" in text and "sites connected 1 (needs 2)" in text, text

        sites.append(site("B"))
        state, text = status_until(lambda s: len(s["rounds_completed"]) >= 1, "a round done")
        assert state["state"] == "running" and state["live"]["sites_connected"] == 2
        assert "trained in round 1: A, B" in text, text
        wait_for_text(run_dir / "report.html", "<td>1</td>", server, timeout=60)  # rewritten after each round

        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        state, text = status_until(lambda s: s["state"] == "stopped", "stopped")
        assert "STOPPED" in text and f"fl-server resume {run_dir}" in text, text
    finally:
        stop_all(server, *sites)
        for fh in logs.values():
            fh.close()


def test_fl_sim_progress_bar_counts_rounds_on_a_terminal_and_stays_off_a_pipe():
    import io

    from rich.console import Console

    from server.submit import Display

    screen = io.StringIO()
    display = Display(rounds=3, progress=True, console=Console(file=screen, force_terminal=True, width=100))
    display.line("\x1b[92mINFO \x1b[0m:      round 1/3 | accuracy 0.500  macro-F1 0.400 | 3.0s\n")
    display.line("\x1b[92mINFO \x1b[0m:      round 2/3 | accuracy 0.600  macro-F1 0.500 | 3.0s\n")
    assert display.bar.tasks[0].completed == 2 and display.bar.tasks[0].total == 3
    display.close()
    assert "round 2/3 | accuracy 0.600" in screen.getvalue() and "2/3" in screen.getvalue()

    piped = io.StringIO()
    assert Display(rounds=3, progress=True, console=Console(file=piped)).bar is None  # logs get plain lines
