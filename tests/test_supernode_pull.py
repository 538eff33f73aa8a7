"""client/supernode.py: the SuperNode's wait after an empty pull is capped, on the installed Flower.

The cap works by replacing the `time` module inside Flower's SuperNode loop, so these tests check
that loop still sleeps through it (a Flower upgrade that changes this must fail here, not silently
bring back the 3 s wait), and that fl-client's SuperNode really runs through the module.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import time

import flwr.supernode.start_client_internal as loop
import pytest

from client.supernode import COMMAND, PULL_ENV, CappedTime, cap_pull_interval


def test_flower_supernode_loop_waits_3_s_through_the_time_module():
    # What the cap is for: Flower's loop sleeps 3 s after a pull that brings no message.
    tree = ast.parse(inspect.getsource(loop))
    sleeps = [node.args[0].value for node in ast.walk(tree)
              if isinstance(node, ast.Call) and ast.unparse(node.func) == "time.sleep"
              and isinstance(node.args[0], ast.Constant)]
    assert 3 in sleeps


def test_capped_time_caps_sleep_and_passes_the_rest_through():
    capped = CappedTime(0.05)
    started = time.monotonic()
    capped.sleep(3)
    assert time.monotonic() - started < 1.0
    assert capped.monotonic() >= started  # anything else is the real time module's


def test_cap_is_installed_in_flowers_loop(monkeypatch):
    monkeypatch.setattr(loop, "time", time)
    cap_pull_interval(0.5)
    assert isinstance(loop.time, CappedTime) and loop.time.cap == 0.5


def test_supernode_module_starts_flowers_supernode(tmp_path):
    # fl-client's command with --help is Flower's own SuperNode CLI, with the cap applied first; a
    # `client` folder in the working directory must not stand in for FedSilo's package.
    (tmp_path / "client").mkdir()
    (tmp_path / "client" / "__init__.py").write_text("")
    (tmp_path / "client" / "supernode.py").write_text("raise SystemExit('wrong client package')\n")
    out = subprocess.run([*COMMAND, "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
                         env={"PATH": "", PULL_ENV: "0.5"})
    assert out.returncode == 0, out.stderr
    assert "usage: flower-supernode" in out.stdout and "--superlink" in out.stdout


# A stand-in SuperNode: its first start does what Flower's does when its heartbeat meets a lost
# session (401): logs the graceful-exit line after a SIGINT to itself, then retries on for ever
# with a closed connection. Later starts stop at once.
FAKE = """
import sys, time
from pathlib import Path
starts = Path(sys.argv[1])
n = int(starts.read_text() or 0) if starts.exists() else 0
starts.write_text(str(n + 1))
if n == 0:
    print("\\x1b[92mINFO \\x1b[0m:      SuperNode terminated gracefully.", flush=True)
    while True:
        print("still retrying", flush=True)
        time.sleep(0.2)
"""


@pytest.mark.timeout(60)  # before the fix, fl-client read the retries for ever
def test_a_supernode_that_stopped_itself_on_a_lost_session_is_started_again(monkeypatch, tmp_path, capsys):
    import sys

    import client.supernode_process as sp

    script, starts = tmp_path / "fake.py", tmp_path / "starts"
    script.write_text(FAKE)
    monkeypatch.setattr(sp, "SUPERNODE_COMMAND", [sys.executable, str(script), str(starts)])
    monkeypatch.setattr(sp, "_stop_asked", [])
    (tmp_path / "flwr").mkdir()
    assert sp.run_supernode([], {"FLWR_HOME": str(tmp_path / "flwr")}, "127.0.0.1:1", 10) == 0
    assert starts.read_text() == "2" and "connecting again" in capsys.readouterr().out


@pytest.mark.timeout(60)
def test_a_supernode_fl_client_stopped_is_not_started_again(monkeypatch, tmp_path):
    import sys
    import threading

    import client.supernode_process as sp

    script, starts = tmp_path / "fake.py", tmp_path / "starts"
    script.write_text(FAKE)
    monkeypatch.setattr(sp, "SUPERNODE_COMMAND", [sys.executable, str(script), str(starts)])
    monkeypatch.setattr(sp, "_stop_asked", [])
    (tmp_path / "flwr").mkdir()
    # fl-client's worker watch stops it (the line then follows fl-client's own request)
    threading.Timer(1.0, sp.stop_running_supernode).start()
    sp._stop_asked.append(True)  # as stop_running_supernode records it, before the line can arrive
    assert sp.run_supernode([], {"FLWR_HOME": str(tmp_path / "flwr")}, "127.0.0.1:1", 10) == 0
    assert starts.read_text() == "1"
