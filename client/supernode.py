"""Flower's SuperNode, with a shorter wait after a pull that brought no message.

    python -m client.supernode [flower-supernode's arguments]

Flower 1.42's SuperNode asks the SuperLink for a message and, when none is waiting, sleeps a
fixed 3 s before it asks again (flwr/supernode/start_client_internal.py). A SecAgg+ round is five
messages to every site (setup, share keys, train and mask, unmask, evaluate), and each stage waits
for its slowest site, so with 3 sites a round spent on average 5 x 2.25 s just waiting for the next
pull. fl-client runs the SuperNode through this module, which caps that one module's sleeps at
PULL_ENV seconds (fl-client --pull-interval); everything else is Flower's own code, unchanged.
Flower's other waits in that module are 0.5 s and stay as they are under the default cap.
"""

from __future__ import annotations

import os
import sys
import time

PULL_ENV = "FEDSILO_PULL_INTERVAL"
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
    return flower_supernode()


if __name__ == "__main__":
    sys.exit(main())
