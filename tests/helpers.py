"""Helpers for the tests: paths, running console scripts, checking error output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SHARED_DATA = ROOT.parent / "shared" / "data"
LABELS = "account,card,loan,transfer"


def run_cli(name: str, *args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run one of FedSilo's console scripts as a user would."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([str(BIN / name), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


def assert_clean_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    """A bad input gives a non-zero exit and one clear line on stderr, never a traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert fragment.lower() in lines[0].lower(), lines[0]


def site_file(demo_dir: Path, name: str, tmp_path: Path) -> Path:
    """A test's own copy of a site's data file: its ledger and audit log are kept beside it."""
    target = tmp_path / f"site-{name}.tsv"
    target.write_bytes((demo_dir / f"site-{name}.tsv").read_bytes())
    return target


def start(name: str, *args, log) -> subprocess.Popen:
    """Start a console script in its own process group, output to the open file `log`."""
    return subprocess.Popen([str(BIN / name), *map(str, args)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for_text(path: Path, text: str, proc: subprocess.Popen | None = None, timeout: float = 120,
                  count: int = 1) -> str:
    """Wait until `text` appears `count` times in the file at `path` (failing early if `proc` exits)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.exists() else ""
        if content.count(text) >= count:
            return content
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {text!r}:\n{content[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not seen in {path} within {timeout}s")


def stop_all(*procs: subprocess.Popen) -> None:
    import os
    import signal

    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
