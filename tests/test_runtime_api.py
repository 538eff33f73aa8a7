"""A local process without the site's SuperExec secret gets nothing from the site's Runtime API.

The SuperNode serves its Runtime API on 127.0.0.1: the task launcher acquires each message's task
there (run config, node config, app bundle, the message). Anyone on the site's machine can reach
it. fl-client gives its SuperNode and task launcher a secret (client/supernode.py); the attacker
here is a process that has the address and Flower's own protocol, but not the secret.
"""

import os
import subprocess
import time

import httpx
import pytest
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611

from client.supernode import COMMAND, SECRET_ENV
from common.launch import flower_env, free_port

PROTOBUF = "application/protobuf"


def start_supernode(tmp_path, secret: bool):
    """The site's SuperNode as fl-client starts it, towards a SuperLink that is not there (the
    Runtime API is up before the SuperNode first reaches the SuperLink)."""
    port = free_port()
    env = flower_env()
    if secret:
        path = tmp_path / "superexec.secret"
        path.write_bytes(os.urandom(32))
        path.chmod(0o600)
        env[SECRET_ENV] = str(path)
    proc = subprocess.Popen([*COMMAND, "--insecure", "--superlink", f"127.0.0.1:{free_port()}", "--port", str(port),
                             "--max-wait-time", "120"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    return proc, port


def acquire_task(port: int) -> httpx.Response:
    """What the attacker sends: Flower's AcquireTask, as the task launcher does, without credentials."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return httpx.post(f"http://127.0.0.1:{port}/v1/runtime/acquire-task",
                              content=AcquireTaskRequest().SerializeToString(),
                              headers={"content-type": PROTOBUF}, timeout=10)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def stop(proc):
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()


@pytest.mark.parametrize("secret", [False, True], ids=["flower-default", "fedsilo"])
def test_a_local_process_without_the_secret_cannot_acquire_the_sites_tasks(tmp_path, secret):
    proc, port = start_supernode(tmp_path, secret)
    try:
        reply = acquire_task(port)
    finally:
        stop(proc)
    if not secret:  # Flower's default: the Runtime API answers anyone who asks (the attack)
        assert reply.status_code == 200, reply.text
    else:
        assert reply.status_code in (401, 403), (reply.status_code, reply.content[:300])
        assert b"authentication" in reply.content.lower()
