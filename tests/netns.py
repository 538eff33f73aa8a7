"""Test hosts made of Linux network namespaces, for network-fault tests (needs root and iproute2).

    with Hosts(["A", "B", "C"]) as net:             # a server and one host per site
        net.popen("server", ["fl-server", ...])      # the command runs inside that namespace
        net.cut("C"); net.restore("C")               # pull / plug site C's cable

Topology: the server namespace holds a bridge with SERVER_IP (10.77.0.1/24); each site has its own
namespace with one veth pair to it (site N at 10.77.0.(10+N), its `eth0`; the server's end is
the bridge port `to-N`). Every namespace has its own loopback, so the SuperLink and the gateway on
the server host and each SuperNode with its ClientApps on a site host are apart, and a site
reaches the server only over its own link. `cut` sets the server's end of that link down: the
site keeps its address and route, its packets vanish (no reset reaches either side), exactly
what a dead line in between looks like. (netem is not built into every kernel; link down is.)

Namespace names carry a prefix, this process's pid and a random tag, so two test runs (or two
engineers) never share one; interfaces are created directly inside the namespaces, never in the
host's. Everything is torn down in __exit__, also when the test fails: processes still inside a
namespace (only the test's own: nothing else runs there) are killed by pid, then the namespaces
go, and their veth pairs with them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

SERVER_IP = "10.77.0.1"
PREFIX = "fedsilo-nt"
# Reachable = a TCP connect to a closed port is refused (an RST came back); no ping needed.
_PROBE = """import socket, sys
try:
    socket.create_connection((sys.argv[1], 9), timeout=1).close()
except ConnectionRefusedError:
    pass
except OSError:
    sys.exit(1)
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def unavailable() -> str | None:
    """Why these tests cannot run here (None when they can): root and iproute2's netns and veth."""
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"{PREFIX}-probe-{os.getpid()}-{secrets.token_hex(2)}"
    try:
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"`ip netns add` failed: {made.stderr.strip()}"
        veth = _ip("-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1", check=False)
        if veth.returncode != 0:
            return f"cannot create a veth pair: {veth.stderr.strip()}"
        bridge = _ip("-n", probe, "link", "add", "b0", "type", "bridge", check=False)
        if bridge.returncode != 0:
            return f"cannot create a bridge: {bridge.stderr.strip()}"
    except (OSError, subprocess.SubprocessError) as err:
        return f"cannot use network namespaces: {err}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


class Hosts:
    """A server host and one host per site, each its own network namespace (see module doc)."""

    def __init__(self, sites: list[str]):
        tag = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(2)}"
        self.ns = {"server": f"{tag}-srv", **{site: f"{tag}-{i}" for i, site in enumerate(sites, 1)}}
        self.port = {site: f"to-{i}" for i, site in enumerate(sites, 1)}  # the server's end of each link
        self.ip = {"server": SERVER_IP, **{site: f"10.77.0.{10 + i}" for i, site in enumerate(sites, 1)}}
        self.created: list[str] = []

    # ------------------------------------------------------------------ building
    def __enter__(self) -> "Hosts":
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        return self

    def _build(self) -> None:
        srv = self.ns["server"]
        for ns in self.ns.values():
            _ip("netns", "add", ns)
            self.created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", srv, "link", "add", "br0", "type", "bridge")  # STP off: ports forward at once
        _ip("-n", srv, "addr", "add", f"{SERVER_IP}/24", "dev", "br0")
        _ip("-n", srv, "link", "set", "br0", "up")
        for site, port in self.port.items():
            _ip("link", "add", "name", port, "netns", srv, "type", "veth", "peer", "name", "eth0",
                "netns", self.ns[site])
            _ip("-n", srv, "link", "set", port, "master", "br0")
            _ip("-n", srv, "link", "set", port, "up")
            _ip("-n", self.ns[site], "addr", "add", f"{self.ip[site]}/24", "dev", "eth0")
            _ip("-n", self.ns[site], "link", "set", "eth0", "up")
        for site in self.port:
            self.wait_reachable(site)

    def wait_reachable(self, site: str, timeout: float = 20) -> None:
        """Until the site's link carries packets (a bridge port needs a moment after `up`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe = subprocess.run(self.command(site, [sys.executable, "-c", _PROBE, SERVER_IP]),
                                   capture_output=True, timeout=10)
            if probe.returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"site {site} cannot reach {SERVER_IP} over its link")

    # ------------------------------------------------------------------ using
    def command(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[host], *map(str, argv)]

    def popen(self, host: str, argv: list[str], log: Path | None = None, **kwargs) -> subprocess.Popen:
        """Start argv on `host` in its own process group (`ip netns exec` execs, so the pid is argv's)."""
        out = open(log, "w") if log is not None else subprocess.DEVNULL
        try:
            return subprocess.Popen(self.command(host, argv), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1"), **kwargs)
        finally:
            if log is not None:
                out.close()

    def cut(self, site: str) -> None:
        """Pull the site's cable: its link to the server carries nothing until restore()."""
        _ip("-n", self.ns["server"], "link", "set", self.port[site], "down")

    def restore(self, site: str) -> None:
        _ip("-n", self.ns["server"], "link", "set", self.port[site], "up")
        self.wait_reachable(site)

    def pids(self, host: str | None = None) -> dict[str, list[int]]:
        """Processes running inside each namespace (or one): empty once everything has stopped."""
        out = {}
        for name, ns in self.ns.items():
            if (host is None or host == name) and ns in self.created:
                listed = _ip("netns", "pids", ns, check=False).stdout.split()
                out[name] = [int(p) for p in listed if p.isdigit()]
        return {name: pids for name, pids in out.items() if pids}

    # ------------------------------------------------------------------ tearing down
    def __exit__(self, *exc) -> None:
        self.teardown()

    def teardown(self) -> None:
        """Kill what still runs inside our namespaces (by pid), then delete them (veths go too)."""
        for _ in range(50):
            left = [pid for pids in self.pids().values() for pid in pids]
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for ns in reversed(self.created):
            _ip("netns", "del", ns, check=False)
        self.created.clear()

    def exists(self) -> list[str]:
        """Our namespaces the kernel still lists (empty after teardown)."""
        listed = _ip("netns", "list", check=False).stdout.split()
        return [ns for ns in self.ns.values() if ns in listed]
