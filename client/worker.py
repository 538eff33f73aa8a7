"""The site worker: one long-lived process per fl-client that does the site's heavy work.

Flower's SuperNode starts a fresh `flwr-clientapp` process for every message (train, evaluate
and each SecAgg+ stage). Importing torch and loading the model and data there cost seconds per
message, more than a small round's training. So fl-client starts this worker once: it imports
torch, and keeps the run's model and tokenised records between messages (client/site_round.py).
The per-message ClientApp stays light (flwr and numpy only) and forwards each task here over a
Unix socket in fl-client's private temporary directory, authenticated with a random key that
only fl-client's children receive (multiprocessing.connection's HMAC handshake).

Nothing new leaves the site: the socket is local, and the ClientApp still decides what is sent.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Listener
from pathlib import Path

from common.errors import FedSiloError

ADDRESS_ENV = "FEDSILO_SITE_WORKER"
KEY_ENV = "FEDSILO_SITE_WORKER_KEY"


def worker_env() -> dict[str, str] | None:
    """The worker's address and key, if this process was started under fl-client."""
    if ADDRESS_ENV not in os.environ:
        return None
    return {"address": os.environ[ADDRESS_ENV], "key": os.environ.get(KEY_ENV, "")}


def call(request: dict):
    """Send one task to the site worker and return its result (ClientApp side: no torch here)."""
    env = worker_env()
    try:
        with Client(env["address"], family="AF_UNIX", authkey=bytes.fromhex(env["key"])) as conn:
            conn.send(request)
            status, result = conn.recv()
    except (OSError, EOFError, AuthenticationError) as err:
        raise FedSiloError(f"the site's training worker is not answering ({type(err).__name__}); "
                           "restart fl-client") from None
    if status == "ok":
        return result
    if status == "error":
        raise FedSiloError(result)
    raise RuntimeError(f"site worker failed: {result}")


def start(directory: Path, env: dict) -> tuple[subprocess.Popen, dict[str, str]]:
    """Start the worker (Python, this installation) with a socket in `directory`; returns the
    process and the environment entries the ClientApp needs to reach it."""
    from common.launch import die_with_parent

    address, key = str(directory / "site-worker.sock"), secrets.token_hex(32)
    worker = subprocess.Popen([sys.executable, "-m", "client.worker"], env={**env, ADDRESS_ENV: address, KEY_ENV: key},
                              stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent)
    deadline = time.monotonic() + 120
    while not os.path.exists(address):  # ready once it listens (imports take a few seconds)
        if worker.poll() is not None:
            raise FedSiloError(f"the site's training worker did not start (exit code {worker.returncode})")
        if time.monotonic() > deadline:
            worker.kill()
            raise FedSiloError("the site's training worker did not start within 120 s")
        time.sleep(0.1)
    return worker, {ADDRESS_ENV: address, KEY_ENV: key}


class Watch:
    """Ends fl-client (SIGTERM to itself, so its SuperNode signs off) when the worker dies while
    the site is connected: a site that cannot train should leave the federation and say why,
    not fail every round. `died` holds the worker's exit code once that happened."""

    def __init__(self, worker: subprocess.Popen | None):
        self.worker, self.died, self.closing = worker, None, False
        if worker is not None:
            threading.Thread(target=self._wait, daemon=True).start()

    def _wait(self) -> None:
        code = self.worker.wait()
        if not self.closing:
            self.died = code
            os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    """Worker process: import the heavy modules once, then serve tasks one at a time (a
    SuperNode sends a site one message at a time)."""
    env = worker_env()
    from client.site_round import serve_reply  # torch, transformers, opacus: once per site

    with Listener(env["address"], family="AF_UNIX", authkey=bytes.fromhex(env["key"])) as listener:
        os.chmod(env["address"], 0o600)
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
