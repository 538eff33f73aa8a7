"""Run only the FedSilo app this site has installed.

Flower's SuperNode starts `flwr-clientapp` by bare name for every message, and that process
installs and runs whatever app bundle (FAB) the server's run carries. fl-client puts a
`flwr-clientapp` of its own first on the SuperNode's PATH: it checks the bundle's SHA-256
against the bundle the site builds from its own installed FedSilo (byte-identical builds:
Flower fixes every zip timestamp) and refuses anything else before a line of it is unpacked.
The refusal reaches the server as the site's error reply.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from pathlib import Path

from common.errors import FedSiloError

APPROVED_ENV = "FEDSILO_APPROVED_APP_SHA256"


def installed_app_hash() -> str:
    """SHA-256 of the app bundle Flower builds from this installation's FedSilo source."""
    from flwr.cli.build import build_fab_from_disk

    from common.launch import app_dir

    return hashlib.sha256(build_fab_from_disk(app_dir())).hexdigest()


def approved_app_hash() -> str:
    """`installed_app_hash()` worked out in a short-lived child: Flower's bundle builder pulls in
    about 60 MB of modules that fl-client, which runs for days beside its SuperNode, never needs
    again (30 sites on one host spent 1.7 GB on them)."""
    import subprocess

    done = subprocess.run([sys.executable, "-P", "-c", "from client.app_guard import installed_app_hash as h; print(h())"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    digest = done.stdout.strip()
    if done.returncode != 0 or len(digest) != 64:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise FedSiloError(f"cannot build the FedSilo app bundle to check it: {last}")
    return digest


def write_shim(bin_dir: Path) -> Path:
    """An executable `flwr-clientapp` that runs `main()` below with this Python."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "flwr-clientapp"
    shim.write_text(f"#!{sys.executable}\nfrom client.app_guard import main\nmain()\n", encoding="utf-8")
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return shim


def main() -> None:
    """The `flwr-clientapp` the SuperNode starts for each message. Under fl-client's site worker it
    only asks the worker to run the task (client/worker.py): no flwr or torch import here."""
    from client import worker_link

    if worker_link.worker_env():
        worker_link.launch(sys.argv[1:])
        return
    run_flower_clientapp(sys.argv[1:])


# The SuperNode starts a task while it is still fetching the message's arrays from the
# SuperLink, and Flower's ClientApp, finding them not there yet, waits 1 s, then 2 s, before
# asking again: measured, 3.2 s of every message that carries the model (fit and evaluate), for
# arrays that arrived a fraction of a second later. The pull is from the SuperNode beside it, so
# asking again sooner costs next to nothing.
LOCAL_PULL_BACKOFF_S = 0.05
LOCAL_PULL_BACKOFF_CAP_S = 2.0


def run_flower_clientapp(argv: list[str]) -> None:
    """Flower's own flwr-clientapp, refusing any app bundle this site did not approve, and
    retrying its pulls from the local SuperNode sooner (above)."""
    import functools

    import flwr.supernode.runtime.run_clientapp as runtime
    from flwr.supernode.cli import flwr_clientapp

    runtime.pull_and_inflate_object_from_tree = functools.partial(
        runtime.pull_and_inflate_object_from_tree, initial_backoff=LOCAL_PULL_BACKOFF_S,
        backoff_cap=LOCAL_PULL_BACKOFF_CAP_S)

    approved = {h for h in os.environ.get(APPROVED_ENV, "").split(",") if h}
    install = runtime.install_from_fab

    def install_if_approved(fab_content: bytes, *args, **kwargs):
        digest = hashlib.sha256(fab_content).hexdigest()
        if digest not in approved:
            raise FedSiloError(f"app not approved by this site: bundle sha256 {digest[:16]}... is not the "
                               "FedSilo app installed here")
        return install(fab_content, *args, **kwargs)

    runtime.install_from_fab = install_if_approved
    sys.argv = ["flwr-clientapp", *argv]
    sys.exit(flwr_clientapp())
