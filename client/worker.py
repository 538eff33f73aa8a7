"""The site worker: one long-lived process per fl-client that does the site's heavy work.

Flower's SuperNode starts a fresh `flwr-clientapp` process for every message (train, evaluate
and each SecAgg+ stage). Importing flwr's runtime and torch, and loading the model and data
there, cost seconds of CPU per message: more than a small round's training, and with 30 sites
on one machine enough to starve the SuperLink. So fl-client starts this worker once. It imports
all of that once, and:
  - runs each message's task in a fork of itself (Flower's own flwr-clientapp code, with the
    app-approval check of client/app_guard.py): the `flwr-clientapp` the SuperNode starts is a
    few lines that only ask for that fork (`launch`), so a message costs milliseconds of CPU;
  - keeps the run's model and tokenised records between messages (client/site_round.py): the
    ClientApp in the fork hands fit and evaluate to this process (`call`).
Both go over a Unix socket in fl-client's private temporary directory, authenticated with a
random key that only fl-client's children receive (client/worker_link.py, the caller's side).

Nothing new leaves the site: the socket is local, and the ClientApp still decides what is sent.
"""

from __future__ import annotations

import gc
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing import AuthenticationError
from multiprocessing.connection import Listener
from pathlib import Path

from client.worker_link import ADDRESS_ENV, KEY_ENV, worker_env

def _fork_task(argv: list[str], listener: Listener) -> int:
    """Run Flower's flwr-clientapp for one task in a child of this process: everything it needs
    is imported already. The child does no torch work (fit and evaluate come back here)."""
    from common.launch import die_with_parent

    # Objects that exist now are left alone by the child's garbage collector, which would
    # otherwise write to (and so copy) every page of the parent's heap it walks.
    gc.freeze()
    pid = os.fork()
    if pid:
        gc.unfreeze()
        return pid
    code = 1
    try:
        # Die with the worker, as a task process dies with its SuperNode: a task left running
        # after its site was killed would hold the SuperNode's runtime API open on its way out.
        die_with_parent()
        if os.getppid() == 1:  # the worker died before that took effect
            os._exit(1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the parent's setting, not the task's
        listener.close()
        from client.app_guard import run_flower_clientapp

        run_flower_clientapp(argv)
        code = 0
    except SystemExit as end:
        code = end.code if isinstance(end.code, int) else (0 if end.code is None else 1)
    except BaseException:  # noqa: BLE001 - a child must never return into the parent's loop
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # not sys.exit: the parent's atexit handlers are not the child's


def start(directory: Path, env: dict) -> tuple[subprocess.Popen, dict[str, str]]:
    """Start the worker (Python, this installation) with a socket in `directory`; returns the
    process and the environment entries the ClientApp needs to reach it. It takes a few seconds
    to import what it needs; whoever connects first waits for it (_connect)."""
    from common.launch import die_with_parent

    address, key = str(directory / "site-worker.sock"), secrets.token_hex(32)
    worker = subprocess.Popen([sys.executable, "-P", "-m", "client.worker"], env={**env, ADDRESS_ENV: address, KEY_ENV: key},
                              stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent)
    return worker, {ADDRESS_ENV: address, KEY_ENV: key}


class Watch:
    """Ends fl-client's SuperNode (which signs off) when the worker dies while the site is
    connected: a site that cannot train should leave the federation and say why, not fail every
    round. `died` holds the worker's exit code once that happened; fl-client then says so.

    No signal to fl-client itself: one that lands while fl-client starts a process (inside the
    fork's handlers, where Python drops the exception it raises) is lost. `on_death` is called
    until fl-client is closing, so a SuperNode started just then is stopped too."""

    def __init__(self, worker: subprocess.Popen | None, on_death=None):
        self.worker, self.died, self.closing, self.on_death = worker, None, False, on_death
        if worker is not None:
            threading.Thread(target=self._wait, daemon=True).start()

    def _wait(self) -> None:
        code = self.worker.wait()
        if self.closing:
            return
        self.died = code
        while not self.closing and self.on_death is not None:
            self.on_death()
            time.sleep(1)


def main() -> None:
    """Worker process: import the heavy modules once, then serve tasks one at a time (a
    SuperNode sends a site one message at a time)."""
    env = worker_env()
    # Once per site: torch, transformers, opacus; Flower's ClientApp runtime and our app.
    import flwr.supernode.cli.flwr_clientapp  # noqa: F401
    import flwr.supernode.runtime.run_clientapp  # noqa: F401

    import client.app  # noqa: F401
    from client.site_round import serve_reply
    # transformers imports its model classes on first use: pay that here, once, before the site
    # says it is ready, rather than inside the first message.
    from transformers import AutoModel, AutoTokenizer  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # task children are reaped by the kernel
    with Listener(env["address"], family="AF_UNIX", authkey=bytes.fromhex(env["key"])) as listener:
        os.chmod(env["address"], 0o600)
        print("fl-client: site worker ready (torch, the ClientApp runtime and the app loaded once)", flush=True)
        while True:
            try:
                conn = listener.accept()
            except (OSError, EOFError, AuthenticationError):  # a wrong key or a dropped caller: keep serving
                continue
            with conn:
                try:
                    request = conn.recv()
                except (OSError, EOFError):
                    continue
                if request.get("op") == "launch":
                    reply = ("ok", _fork_task(request["argv"], listener))
                else:
                    reply = serve_reply(request)
                try:
                    conn.send(reply)
                except (OSError, EOFError):  # the ClientApp gave up (its task ended): nothing to do
                    pass


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
