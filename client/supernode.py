"""Flower's SuperNode, with a shorter wait after a pull that brought no message, and with its
Runtime API closed to local processes that do not hold the site's SuperExec secret.

    python -m client.supernode [flower-supernode's arguments]

Flower 1.42's SuperNode asks the SuperLink for a message and, when none is waiting, sleeps a
fixed 3 s before it asks again (flwr/supernode/start_client_internal.py). A SecAgg+ round is five
messages to every site (setup, share keys, train and mask, unmask, evaluate), and each stage waits
for its slowest site, so with 3 sites a round spent on average 5 x 2.25 s just waiting for the next
pull. fl-client runs the SuperNode through this module, which caps that one module's sleeps at
PULL_ENV seconds (fl-client --pull-interval); everything else is Flower's own code, unchanged.
Flower's other waits in that module are 0.5 s and stay as they are under the default cap.

The Runtime API (127.0.0.1, plain HTTP) is where a site's task launcher acquires each message's
task, with the run and node config, the app bundle and the message. In Flower's default
`subprocess` isolation it asks no credential, so any local process could take the site's tasks
and answer in its name, round the app pin, DP and SecAgg+. Flower authenticates it (an HMAC of
every request under a shared secret) only in `process` isolation, where it does not start the
task launcher itself. So, given SECRET_ENV (a file in fl-client's private temporary directory),
this module runs the SuperNode in `process` isolation with that secret and starts Flower's
`flower-superexec` beside it with the same secret, as Flower's subprocess mode would start it
without one.
"""

from __future__ import annotations

import os
import sys
import time

PULL_ENV = "FEDSILO_PULL_INTERVAL"
SECRET_ENV = "FEDSILO_SUPEREXEC_SECRET_FILE"
DEFAULT_PULL_INTERVAL = 0.5
# How fl-client starts it. -P: the working directory is not put on sys.path, so a `client` folder
# wherever the operator happens to run fl-client cannot stand in for this package.
COMMAND = [sys.executable, "-P", "-m", "client.supernode"]


class CappedTime:
    """Stands in for the `time` module inside Flower's SuperNode loop: sleeps are capped, the rest is time's."""

    def __init__(self, cap: float):
        self.cap = cap

    def __getattr__(self, name: str):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))


def cap_pull_interval(cap: float) -> None:
    import flwr.supernode.start_client_internal as loop

    # A Flower release that no longer sleeps through this module's `time` would silently lose the
    # cap: refuse to start instead (tests/test_supernode_pull.py checks it on the installed Flower).
    if getattr(loop, "time", None) is not time and not isinstance(getattr(loop, "time", None), CappedTime):
        raise RuntimeError("flwr.supernode.start_client_internal no longer uses the time module; "
                           "client/supernode.py needs updating for this Flower release")
    loop.time = CappedTime(cap)


def main() -> int:
    try:
        cap_pull_interval(float(os.environ.get(PULL_ENV, DEFAULT_PULL_INTERVAL)))
    except RuntimeError as err:
        print(f"fl-client: {err}", file=sys.stderr, flush=True)
        return 1
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"  # Flower's usage and log lines name the program
    secret = os.environ.get(SECRET_ENV)
    if secret:
        sys.argv += ["--isolation", "process", "--superexec-auth-secret-file", secret]
        start_superexec(runtime_port(sys.argv), secret)
    return flower_supernode()


def runtime_port(argv: list[str]) -> int:
    """The Runtime API's port, as fl-client passes it (`--port N`)."""
    for i, arg in enumerate(argv):
        if arg == "--port" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--port="):
            return int(arg.split("=", 1)[1])
    raise SystemExit("fl-client: the SuperNode needs --port for its Runtime API")


def start_superexec(port: int, secret: str) -> None:
    """Flower's task launcher, as its subprocess isolation starts it, plus the secret. It retries
    until the Runtime API is up, and ends with this process (--parent-pid)."""
    import subprocess

    subprocess.Popen(["flower-superexec", "--insecure", "--runtime-api-address", f"127.0.0.1:{port}",
                      "--parent-pid", str(os.getpid()), "--superexec-auth-secret-file", secret])


if __name__ == "__main__":
    sys.exit(main())
