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
