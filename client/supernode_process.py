"""fl-client's SuperNode process: start it, turn its log into one line per retry and one clear
error for what ends it for good, and wait out a previous session that did not sign off.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from client.supernode import COMMAND as SUPERNODE_COMMAND
from common.errors import FedSiloError
from common.launch import die_with_parent, process_identity, stop

# SuperNode log lines that end a connection attempt for good, and what they mean to an operator.
NOT_ENROLLED = ("this site's key is not enrolled in the federation (ask the coordinator to run "
                "fl-server enroll, and use the kit it writes)")
FATAL = (
    ("code: 2004", NOT_ENROLLED),
    ("code: 2001", "the server requires an enrolled site key; start with --kit"),
    ("CERTIFICATE_VERIFY_FAILED", "the server's certificate is not signed by the CA in this kit"),
    ("certificate verify failed", "the server's certificate is not signed by the CA in this kit"),
)
# Flower retries a failed connection with exponential backoff and jitter, logging each wait,
# and logs when --max-wait / --max-retries is used up.
RETRY = re.compile(r"Connection attempt failed, retrying in ([0-9.]+) seconds")
GIVE_UP = re.compile(r"Giving up reconnection after ([0-9.]+) seconds and (\d+) tries")
# The server answers a known session's call with 401 once it no longer knows the session: a new
# fl-server run (a fresh SuperLink) after the last one ended, or a SuperLink restarted without its
# state. Flower's SuperNode then shuts itself down half-way (its retry thread goes on, reaching
# nothing), so fl-client starts a fresh SuperNode, which activates the site's key anew.
SESSION_LOST = re.compile(r"401 Unauthorized.*/v1/fleet/")
# The SuperNode's heartbeat thread can meet that 401 first: Flower then sends the SuperNode a
# SIGINT, which logs this line, and its main loop goes on retrying with a closed connection, never
# reaching the new server. Not asked for by fl-client (stop_running_supernode), it is the same case.
SELF_STOPPED = "SuperNode terminated gracefully."
LOST = "session lost"  # _supernode's answer for that case: start again
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")  # a traceback's last line
# A SuperNode that dies without signing off (the whole site killed with kill -9, power loss, the
# OOM killer) stays "online" at the SuperLink until HEARTBEAT_PATIENCE x HEARTBEAT_DEFAULT_INTERVAL
# (2 x 30 s in flwr 1.42) after its last heartbeat, and until then the SuperLink refuses to
# activate the same key again, with the code 2004 it also gives a key it does not know. A site
# restarted at once was therefore told that its key is not enrolled, and stayed out
# (tests/test_network_faults.py). SessionMark tells the two apart; this is how long to wait
# (the heartbeat window, plus the ServerApp's 3 s poll that turns the dead session's pending
# message into a "Node Unavailable" reply, so the new session does not inherit it, plus margin).
STALE_SESSION_S = 65.0


class SessionMark:
    """A file that exists while this site's key has a SuperNode running (removed on every clean
    exit). Found at start, it means the last session ended without signing off, so a refused
    activation (code 2004) may be that session, still counted online: see STALE_SESSION_S.

    It lives in the site's own kit folder (never a shared temporary folder, where another user
    could plant it or a symlink in its place), is written without following a symlink, and names
    its fl-client by pid and start time (a reused pid is not the same process)."""

    def __init__(self, kit: Path):
        self.path = kit.resolve() / ".fl-client-session"
        self.stale = False

    def _read(self) -> str | None:
        try:
            info = os.lstat(self.path)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                return None  # not ours: ignore it, and replace it below
            return self.path.read_text(encoding="ascii").strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def __enter__(self) -> "SessionMark":
        mark = self._read()
        if mark is not None:  # the mark of a session that did not end cleanly, unless its fl-client still runs
            pid = mark.split(":")[0]
            self.stale = not pid.isdigit() or process_identity(int(pid)) != mark
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(process_identity(os.getpid()) or str(os.getpid()))
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(OSError):
            if self._read() == (process_identity(os.getpid()) or str(os.getpid())):
                self.path.unlink()


def run_supernode(args: list[str], env: dict, server: str, max_wait: float,
                  session: SessionMark | None = None) -> int:
    with session or contextlib.nullcontext():
        fatal = _supernode(args, env, server)
        if fatal == NOT_ENROLLED and session is not None and session.stale:
            wait = min(STALE_SESSION_S, max_wait)
            print(f"fl-client: the server still counts this site's previous session as connected (it ended "
                  f"without signing off); trying again in {wait:.0f} s, once the server has let it go",
                  flush=True)
            time.sleep(wait)
            fatal = _supernode(args, env, server)
        while fatal == LOST:
            print("fl-client: the server no longer knows this site's session (a new run on a fresh "
                  "coordinator, or one restarted without its state); connecting again", flush=True)
            time.sleep(1.0)
            fatal = _supernode(args, env, server)
    if fatal:
        raise FedSiloError(fatal)
    return 0


_running: list[subprocess.Popen] = []  # the SuperNode now running, for stop_running_supernode
_stop_asked: list[bool] = []  # set by stop_running_supernode: a SuperNode stopping now is not a lost session


def stop_running_supernode() -> None:
    """Stop the SuperNode now running, from another thread (fl-client's worker watch): it signs
    off, its output ends, and run_supernode returns."""
    _stop_asked.append(True)
    for proc in list(_running):
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGTERM)


def _supernode(args: list[str], env: dict, server: str) -> str | None:
    """Run one SuperNode until it stops; returns what ended it for good (None: a normal stop)."""
    # die_with_parent: if fl-client itself is killed (kill -9 of its process group, which does not
    # hold the SuperNode), the SuperNode gets SIGTERM and signs off instead of running on orphaned,
    # still holding the site's key, so that a restarted fl-client could not connect.
    # cwd: the private FLWR_HOME's folder, not wherever the operator started fl-client
    supernode = subprocess.Popen([*SUPERNODE_COMMAND, *args], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                 errors="replace", start_new_session=True, preexec_fn=die_with_parent,
                                 cwd=Path(env["FLWR_HOME"]).parent)
    fatal, attempts, held = None, 0, []
    _running.append(supernode)
    try:
        for line in supernode.stdout:
            retry = RETRY.search(line)
            if retry:  # one progress line of ours per failed attempt, instead of Flower's warning
                attempts += 1
                print(f"fl-client: cannot reach {server} yet (attempt {attempts}); retrying in "
                      f"{float(retry.group(1)):.1f} s", flush=True)
                continue
            # A traceback is held until its last line: the one a lost session ends in is ours to
            # handle (a fresh SuperNode), not the operator's to read.
            if held or line.startswith(("Exception in thread", "Traceback")):
                held.append(line)
                if SESSION_LOST.search(line):
                    fatal = LOST
                    break
                if not EXCEPTION_LINE.match(line) and len(held) < 200:
                    continue
                line, held = "".join(held), []
            if SELF_STOPPED in line and not _stop_asked:
                fatal = LOST
                break
            sys.stdout.write(line)
            sys.stdout.flush()
            # Flower's SuperNode logs some fatal conditions but keeps running: end it ourselves.
            for marker, meaning in FATAL:
                if marker in line:
                    fatal = meaning
            give_up = GIVE_UP.search(line)
            if give_up:
                fatal = (f"cannot reach the server at {server}: gave up after {give_up.group(2)} attempts "
                         f"in {float(give_up.group(1)):.0f} s (is fl-server running there? see --max-wait "
                         "and --max-retries)")
            if fatal:
                break
        else:
            sys.stdout.write("".join(held))  # a traceback the SuperNode's output ended in
    finally:
        _running.remove(supernode)
        stop(supernode)
    if fatal:
        return fatal
    if supernode.returncode not in (0, -signal.SIGTERM):
        raise FedSiloError(f"the SuperNode stopped with exit code {supernode.returncode}")
    return None
