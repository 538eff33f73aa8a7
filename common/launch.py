"""Starting and stopping Flower's own processes (SuperLink, SuperNode, `flwr run`).

Flower has no public Python API to start them, so FedSilo runs its console scripts with the
environment they need on an air-gapped machine, and always stops what it started.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.errors import FedSiloError

LOOPBACK_NAMES = ("localhost",)  # resolved by /etc/hosts; every other name must be an IP literal


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    # SuperLink/SuperNode start `flower-superexec` etc. by bare name.
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")  # see common/model.py
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Like `python -P`: no child Python puts its working directory (or a script's folder) first
    # on sys.path, so a `server/` or `common/` folder where FedSilo was started is never imported.
    env["PYTHONSAFEPATH"] = "1"
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def flower_script(name: str) -> str:
    """Flower's console script `name`: the one installed with this Python, else the first on PATH
    (flwr installed with pip --target, as bench/gpu_check.py does on a machine without an index)."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise FedSiloError(f"{name} not found next to {sys.executable} or on PATH; is flwr installed?")
    return found


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise FedSiloError(f"invalid address {address!r}: use HOST:PORT")
    if not 1 <= int(port) <= 65535:  # socket calls would fail later with a traceback
        raise FedSiloError(f"invalid address {address!r}: the port must be 1-65535")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """An IP literal in 127.0.0.0/8 or ::1, or `localhost`: never a name that merely starts with
    "127." (`127.evil.example` resolves wherever its owner wants)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_loopback(host: str, what: str) -> None:
    if not is_loopback(host):
        raise FedSiloError(f"{what}: plaintext is allowed on 127.0.0.1 only, not {host!r}")


def port_free(host: str, port: int) -> bool:
    """True if `host:port` can be bound; an address that is not this machine's is an error."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (socket.gaierror, UnicodeError) as err:
        raise FedSiloError(f"cannot listen on {host}:{port}: unknown host ({err})") from None
    with socket.socket(family) as sock:
        # Like the servers themselves: connections of a killed predecessor lingering in TIME_WAIT
        # do not block a restart (an active listener still does).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return False
            # e.g. EADDRNOTAVAIL: the address belongs to another machine; "in use" would mislead
            raise FedSiloError(f"cannot listen on {host}:{port} ({err.strerror})") from None
    return True


def require_port_free(host: str, port: int) -> None:
    if not 1 <= port <= 65535:  # bind() would raise OverflowError
        raise FedSiloError(f"port {port}: use a number from 1 to 65535")
    if not port_free(host, port):
        raise FedSiloError(f"port {port} on {host} is already in use (another fl-server? "
                           "pick one with --port)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, proc: subprocess.Popen, timeout: float, what: str,
                  log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            hint = f"; see {log_path}" if log_path else ""
            raise FedSiloError(f"{what} exited with code {proc.returncode} during start-up{hint}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise FedSiloError(f"{what} did not open {host}:{port} within {timeout:.0f}s")


def die_with_parent() -> None:
    """In a child before exec: SIGTERM it when its parent dies, even by SIGKILL (Linux).

    A coordinator killed with kill -9 (or by the OOM killer) runs no cleanup; without this its
    SuperLink would keep the port and the run directory's database, and a restart would fail."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def spawn(cmd: list[str], env: dict, log_path: Path | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """Start a child in its own process group (so stopping it stops its children too); it is
    terminated if this process dies without stopping it."""
    out = open(log_path, "ab") if log_path else None
    try:
        return subprocess.Popen(cmd, env=env, stdout=out or None, stderr=subprocess.STDOUT if out else None,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent,
                                cwd=cwd)
    finally:
        if out:
            out.close()


def stop(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """SIGTERM the child's process group and those of its descendants, then SIGKILL what is left
    after `grace` seconds.

    The descendants' groups matter: the SuperLink starts its SuperExec in a session of its own,
    and the SuperExec the ServerApp; killing the SuperLink's group alone left that ServerApp
    running on, orphaned, until its wait for sites (--round-timeout) ran out
    (tests/test_network_faults.py)."""
    if proc is None or proc.poll() is not None and not _group_alive(proc.pid):
        return
    groups = _groups_below(proc.pid)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            if not any(_group_alive(pgid) for pgid in groups):
                return
            time.sleep(0.1)


def _groups_below(pid: int) -> list[int]:
    """The process group `pid` leads, and the groups of every process below it (Linux /proc;
    elsewhere only the first), never this process's own group."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
            ppid = int(stat[stat.rindex(b")") + 2:].split()[1])  # the name in (...) may hold spaces
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    groups, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            try:
                pgid = os.getpgid(child)
            except ProcessLookupError:
                continue
            if pgid not in groups and pgid != os.getpgrp():
                groups.append(pgid)
    return groups


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def private_flwr_home(run_dir: Path) -> Iterator[Path]:
    """A FLWR_HOME for one run, made here (mode 0700, a name nobody can guess) and removed after.

    Flower installs the app bundle into $FLWR_HOME/apps/PUBLISHER.NAME.VERSION.HASH8/ and reuses
    such a folder, unchecked, if it exists: a FLWR_HOME that outlives the run (RUN_DIR/.flwr, as
    before) would run whatever someone planted there as the coordinator. Every Flower process of
    the run also works in it: Ray puts its driver's working directory on its workers' sys.path."""
    for stale in run_dir.glob(".flwr-*"):  # left by a run killed with SIGKILL
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    home = Path(tempfile.mkdtemp(prefix=".flwr-", dir=run_dir))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def write_flwr_home(flwr_home: Path, address: str, insecure: bool, root_cert: str | None = None) -> None:
    """`flwr run` reads its SuperLink connection from $FLWR_HOME/config.toml."""
    flwr_home.mkdir(mode=0o700, parents=True, exist_ok=True)
    lines = ['[superlink]', 'default = "fedsilo"', "", "[superlink.fedsilo]", f'address = "{address}"']
    lines.append(f"insecure = {'true' if insecure else 'false'}")
    if root_cert:
        lines.append(f'root-certificates = "{root_cert}"')
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def app_dir() -> Path:
    """The Flower app bundle: the project folder holding pyproject.toml and the three packages."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file() or not (root / "server" / "app.py").is_file():
        raise FedSiloError(f"the FedSilo app folder (pyproject.toml + server/ client/ common/) was not "
                           f"found at {root}; install FedSilo from its source tree (pip install -e .)")
    return root


# The ServerApp runs three processes below the coordinator (SuperLink -> SuperExec -> ServerApp),
# each in a session of its own: a coordinator killed with SIGKILL cannot stop it, and an orphaned
# ServerApp would go on writing into the run directory of the resumed run. The coordinator's
# identity travels down in the environment; the ServerApp watches it (server/app.py).
COORDINATOR_ENV = "FEDSILO_COORDINATOR"


def process_identity(pid: int) -> str | None:
    """'PID:START' (start time in clock ticks since boot; a reused pid has another), or None
    when no such process lives (Linux /proc; elsewhere the pid alone)."""
    if not os.path.isdir("/proc"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return str(pid)
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    if fields[0] == b"Z":  # a zombie has died already
        return None
    return f"{pid}:{int(fields[19])}"


def coordinator_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for the SuperLink of a coordinator (fl-server, fl-sim): names this process, and drops
    the switches that would make the SuperLink also open its legacy gRPC Fleet and Control servers
    on 0.0.0.0, beside the gateway instead of behind it."""
    env = {k: v for k, v in env.items() if k not in LEGACY_GRPC_SWITCHES}
    return {**env, COORDINATOR_ENV: process_identity(os.getpid()) or str(os.getpid())}


LEGACY_GRPC_SWITCHES = ("FLWR_INTERNAL_GRPC_FLEET_API", "FLWR_INTERNAL_GRPC_CONTROL_API")
