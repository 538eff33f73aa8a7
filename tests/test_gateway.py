"""The gateway against an attacker: a real SuperLink (TLS, SuperNode auth) behind server/gateway.py,
and a table of request targets sent byte for byte over a raw TLS socket, so that no client library
normalises them first. Nothing may reach the Control API; the Fleet API must still get through."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.proto.control_pb2 import ListNodesRequest, ListRunsRequest, RegisterNodeRequest
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from common.launch import flower_env, flower_script, free_port, spawn, stop, wait_for_port, write_flwr_home
from server.gateway import FLEET_CALLS, MAX_BODY_BYTES
from tests.helpers import BIN, ROOT, run_cli

LIMIT = 1024 * 1024  # the test gateway's --max-body, so that going past it is cheap


@pytest.fixture(scope="module")
def link(tmp_path_factory):
    """A SuperLink on 127.0.0.1:inner and the gateway in front of it on 127.0.0.1:port."""
    tmp = tmp_path_factory.mktemp("gateway")
    port, inner = free_port(), free_port()
    fed = tmp / "fed"
    assert run_cli("fl-server", "init", "--dir", fed, "--host", "127.0.0.1", "--port", port).returncode == 0
    env = dict(flower_env(tmp / ".flwr"), PYTHONPATH=str(ROOT))
    certs = {"ca": fed / "ca.pem", "cert": fed / "server.pem", "key": fed / "server.key"}
    assert all(p.exists() for p in certs.values()), sorted(os.listdir(fed))
    superlink = spawn([flower_script("flower-superlink"), "--ssl-ca-certfile", str(certs["ca"]),
                       "--ssl-certfile", str(certs["cert"]), "--ssl-keyfile", str(certs["key"]),
                       "--enable-supernode-auth", "--host", "127.0.0.1", "--port", str(inner),
                       "--database", ":flwr-in-memory:", "--disable-runtime-dependency-installation"],
                      env, tmp / "superlink.log")
    gateway = spawn([sys.executable, "-m", "server.gateway", "--listen", f"127.0.0.1:{port}",
                     "--upstream", f"127.0.0.1:{inner}", "--cert", str(certs["cert"]), "--key", str(certs["key"]),
                     "--ca", str(certs["ca"]), "--max-body", str(LIMIT)], env, tmp / "gateway.log")
    try:
        wait_for_port("127.0.0.1", inner, superlink, 60, "the SuperLink", tmp / "superlink.log")
        wait_for_port("127.0.0.1", port, gateway, 30, "the gateway", tmp / "gateway.log")
        yield {"port": port, "inner": inner, "ca": str(certs["ca"]), "tmp": tmp, "env": env}
    finally:
        stop(gateway)
        stop(superlink)


def tls(port: int, ca: str) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=ca)
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30), server_hostname="127.0.0.1")


def read_reply(sock: ssl.SSLSocket) -> tuple[int, dict]:
    """Status and JSON body of the one reply on a `Connection: close` socket."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():  # one chunk is all these small replies use
        body = body.split(b"\r\n", 2)[1]
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {"raw": body.decode(errors="replace")}


def send(link, method: str, target: bytes | str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict]:
    """One request with the target exactly as given, over TLS to the gateway."""
    target = target.encode() if isinstance(target, str) else target
    fields = {"Host": f"127.0.0.1:{link['port']}", "Content-Type": "application/protobuf",
              "Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    head = b"".join(f"{k}: {v}\r\n".encode() for k, v in fields.items())
    with tls(link["port"], link["ca"]) as sock:
        sock.sendall(method.encode() + b" " + target + b" HTTP/1.1\r\n" + head + b"\r\n" + body)
        return read_reply(sock)


# A valid Control API request for each call, so that any that got through would act.
ATTACKER_KEY = public_key_to_bytes(ec.generate_private_key(ec.SECP256R1()).public_key())
CONTROL = {"list-nodes": ListNodesRequest().SerializeToString(),
           "list-runs": ListRunsRequest().SerializeToString(),
           "register-node": RegisterNodeRequest(public_key=ATTACKER_KEY, name="intruder").SerializeToString()}
TRICKS = ["/v1/control/{c}", "/v1/fleet/../control/{c}", "/v1/fleet/%2e%2e/control/{c}",
          "/v1/fleet/%2E%2E/control/{c}", "/v1/fleet/..%2fcontrol/{c}", "/v1/fleet/%2e%2e%2fcontrol/{c}",
          "/v1/fleet/./../control/{c}", "/v1/fleet/../../v1/control/{c}", "/v1/fleet/get-run/../../control/{c}",
          "/v1/fleet/..//control/{c}", "/v1/fleet//../control/{c}", "/v1/fleet/..\\control/{c}",
          "/v1/fleet/%2F..%2Fcontrol/{c}", "/v1/fleet/..;/control/{c}",
          "https://127.0.0.1:{port}/v1/fleet/../control/{c}", "https://127.0.0.1:{port}/v1/control/{c}",
          "http://127.0.0.1:{port}/v1/fleet/../control/{c}", "/v1/fleet/../control/{c}?x=1",
          "/v1/fleet/pull-messages?/../../control/{c}"]
ATTACKS = [(trick, call) for call in CONTROL for trick in TRICKS]


def gateway_refusal(status: int, reply: dict, *statuses: int) -> bool:
    return status in statuses and str(reply.get("detail", "")).startswith("FedSilo gateway")


@pytest.mark.parametrize("trick,call", ATTACKS, ids=[f"{c}:{t}" for t, c in ATTACKS])
def test_path_tricks_never_reach_the_control_api(link, trick, call):
    target = trick.format(c=call, port=link["port"])
    status, reply = send(link, "POST", target, CONTROL[call])
    assert gateway_refusal(status, reply, 403), (target, status, reply)


@pytest.mark.parametrize("method,target,expected", [
    ("POST", "/v1/fleet/pull-messages-and-more", 403),      # only starts with an allowed path
    ("POST", "/v1/fleet/pull-messages/", 403),
    ("POST", "/v1/fleet/", 403),
    ("POST", "/v1/fleetx/pull-messages", 403),
    ("POST", "/V1/FLEET/PULL-MESSAGES", 403),
    ("POST", "/v1/runtime/get-nodes", 403),
    ("POST", "/health", 403),
    ("POST", "/docs", 403),
    ("GET", "/v1/fleet/pull-messages", 405),                # a method Fleet calls never use
    ("PUT", "/v1/fleet/register-node", 405),
    ("DELETE", "/v1/control/list-nodes", 403),
    ("OPTIONS", "*", 403),                                  # asterisk-form
])
def test_only_the_fleet_calls_and_post(link, method, target, expected):
    status, reply = send(link, method, target)
    assert gateway_refusal(status, reply, expected), (method, target, status, reply)


def test_non_ascii_target_is_refused(link):
    status, _ = send(link, "POST", "/v1/fleet/pull-messages/é/../../control/list-nodes".encode())
    assert status in (400, 403), status  # h11 refuses it before the gateway's own check


def test_declared_body_over_the_limit_is_refused_unread(link):
    status, reply = send(link, "POST", "/v1/fleet/push-object", headers={"Content-Length": str(LIMIT + 1)})
    assert gateway_refusal(status, reply, 413), (status, reply)


def test_both_body_framings_are_refused(link):
    """Content-Length and Transfer-Encoding together: the classic request-smuggling ambiguity."""
    status, reply = send(link, "POST", "/v1/fleet/pull-messages", b"5\r\nhello\r\n0\r\n\r\n",
                         headers={"Content-Length": "3", "Transfer-Encoding": "chunked"})
    assert gateway_refusal(status, reply, 400), (status, reply)


def test_chunked_body_over_the_limit_is_cut_off(link):
    """No Content-Length: the gateway counts while it streams and stops one byte past the limit."""
    head = (f"POST /v1/fleet/push-object HTTP/1.1\r\nHost: 127.0.0.1:{link['port']}\r\n"
            "Content-Type: application/protobuf\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    piece = b"\0" * 65536
    with tls(link["port"], link["ca"]) as sock:
        sock.sendall(head.encode())
        for _ in range(LIMIT // len(piece)):
            sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        sock.settimeout(1)
        with pytest.raises(TimeoutError):  # at the limit: no answer yet, the gateway waits for more
            sock.recv(1)
        sock.settimeout(30)
        sock.sendall(b"1\r\n\0\r\n")  # one byte past it (no last chunk: the gateway must not wait for one)
        status, reply = read_reply(sock)
    assert gateway_refusal(status, reply, 413), (status, reply)


def test_fleet_calls_are_forwarded_to_the_superlink(link):
    """The allow-listed calls reach the SuperLink and get its own answer: without a signed node
    identity, its SuperNode authentication says 401 (not the gateway's 403)."""
    for method, path in sorted(FLEET_CALLS):
        status, reply = send(link, method, path)
        assert status == 401 and reply == {"detail": "Invalid SuperNode authentication"}, (path, status, reply)
    # A body streamed in chunks (no Content-Length), of exactly the limit, is passed on whole: a
    # valid PullMessagesRequest padded with an unknown field, so the SuperLink parses it and says 401.
    pad = LIMIT - 5  # field 1000, length-delimited: a 2-byte tag and a 3-byte length
    body = b"\xc2\x3e" + bytes([pad & 0x7F | 0x80, pad >> 7 & 0x7F | 0x80, pad >> 14]) + b"\0" * pad
    assert len(body) == LIMIT
    head = (f"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: 127.0.0.1:{link['port']}\r\n"
            "Content-Type: application/protobuf\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    with tls(link["port"], link["ca"]) as sock:
        sock.sendall(head.encode())
        for start in range(0, LIMIT, 65536):
            piece = body[start:start + 65536]
            sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        status, reply = read_reply(sock)
    assert status == 401 and reply == {"detail": "Invalid SuperNode authentication"}, (status, reply)


def test_the_default_limit_fits_the_largest_fleet_request():
    """SecAgg+ sends a site's masked update as one ConfigRecord of 8 bytes a value: full
    fine-tuning of MiniLM-L6 (22,566,916 values) is one PushObject of about 180.5 MB."""
    assert MAX_BODY_BYTES > 1.4 * 22_566_916 * 8


def test_afterwards_the_superlink_saw_no_control_call(link):
    """After the whole table (pytest runs this module's tests in order; this one is last): the SuperLink saw no Control
    call, and asked over loopback it lists no node; the same register-node request sent to it
    directly does register one, so the attack's body was a live one."""
    log = (link["tmp"] / "superlink.log").read_text(errors="replace")
    assert "/v1/control/" not in log and "ControlServicer" not in log, log[-3000:]
    home = link["tmp"] / "admin-flwr-home"
    write_flwr_home(home, f"127.0.0.1:{link['inner']}", insecure=False, root_cert=link["ca"])

    def nodes():
        out = subprocess.run([str(BIN / "flwr"), "supernode", "list", "fedsilo", "--format", "json"],
                             env=flower_env(home), capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout)["nodes"]

    assert nodes() == []
    with tls(link["inner"], link["ca"]) as sock:
        body = CONTROL["register-node"]
        sock.sendall(b"POST /v1/control/register-node HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     b"application/protobuf\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        status, reply = read_reply(sock)
    assert status == 200, reply
    assert len(nodes()) == 1
