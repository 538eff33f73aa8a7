"""How the ClientApp side reaches the site worker (client/worker.py): its address and key in
the environment, one task per connection over a Unix socket in fl-client's private temporary
directory, authenticated with multiprocessing.connection's HMAC handshake.

Kept apart from the worker itself so that what every message's process imports (client/app.py,
client/app_guard.py) never imports the worker, which imports them to preload them.
"""

from __future__ import annotations

import os
import sys
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client

from common.errors import FedSiloError

ADDRESS_ENV = "FEDSILO_SITE_WORKER"
START_TIMEOUT_S = 120.0
KEY_ENV = "FEDSILO_SITE_WORKER_KEY"


def worker_env() -> dict[str, str] | None:
    """The worker's address and key, if this process was started under fl-client."""
    if ADDRESS_ENV not in os.environ:
        return None
    return {"address": os.environ[ADDRESS_ENV], "key": os.environ.get(KEY_ENV, "")}


def _connect(env: dict):
    """A connection to the worker, waiting for it to finish starting: fl-client starts it and the
    SuperNode side by side, so that a restarted site is back in the federation at once."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not os.path.exists(env["address"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return Client(env["address"], family="AF_UNIX", authkey=bytes.fromhex(env["key"]))


def call(request: dict):
    """Send one task to the site worker and return its result (ClientApp side: no torch here)."""
    env = worker_env()
    try:
        with _connect(env) as conn:
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


def launch(argv: list[str]) -> None:
    """`flwr-clientapp ARGS` under fl-client: have the worker run the task in a fork of itself.
    Flower starts this process and does not wait for it, so it returns once the fork exists."""
    env = worker_env()
    try:
        with _connect(env) as conn:
            conn.send({"op": "launch", "argv": argv})
            conn.recv()
    except (OSError, EOFError, AuthenticationError) as err:
        sys.exit(f"flwr-clientapp: the site's training worker is not answering ({type(err).__name__})")
