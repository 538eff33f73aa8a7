"""The container image and deploy/compose.yaml: build the image, bring a federation up (a
coordinator and three sites, TLS, SecAgg+, DP-SGD, the embedded MiniLM) and see one round through.

Marked `docker`: it needs a Docker daemon and skips, saying so, where none answers. It takes
5 to 15 minutes (a cold image build longer); run it alone with `pytest -m docker`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest

from common.launch import free_port
from tests.helpers import ROOT

pytestmark = [pytest.mark.docker, pytest.mark.slow]
IMAGE = os.environ.get("FEDSILO_IMAGE", "fedsilo:test")


def docker_ready() -> str | None:
    if not shutil.which("docker"):
        return "no docker client"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        return "no Docker daemon answers (start one: dockerd --bridge=none --iptables=false)"
    if not compose_command():
        return "neither `docker compose` nor `docker-compose`"
    return None


def compose_command() -> list[str] | None:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.fixture(scope="module")
def image():
    why = docker_ready()
    if why:
        pytest.skip(why)
    proc = subprocess.run([str(ROOT / "deploy" / "docker" / "build.sh"), IMAGE], capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return IMAGE


def run(cmd: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def test_image_runs_as_an_unprivileged_user_and_holds_no_key(image):
    who = run(["docker", "run", "--rm", "--network", "host", image, "id", "-u"])
    assert who.returncode == 0 and who.stdout.strip() == "10001", who.stderr
    keys = run(["docker", "run", "--rm", "--network", "host", "--user", "0", image, "sh", "-c",
                "find / -xdev \\( -name '*.key' -o -name 'ca.pem' -o -name 'pip-ca.crt' \\) -not -path '/proc/*' "
                "-not -path '*/site-packages/*' 2>/dev/null"])
    assert keys.stdout.strip() == "", keys.stdout
    health = run(["docker", "image", "inspect", "-f", "{{json .Config.Healthcheck}}", image])
    assert "fedsilo-healthcheck" in health.stdout
    helps = run(["docker", "run", "--rm", "--network", "host", image, "fl-client", "--help"])
    assert helps.returncode == 0 and "--kit" in helps.stdout


def test_compose_brings_up_a_federation_that_completes_a_round(image, tmp_path):
    compose = compose_command()
    project = f"fedsilo-test-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, FEDSILO_IMAGE=image, FEDSILO_PORT=str(free_port()), FEDSILO_ROUNDS="1",
               FEDSILO_PER_SITE="80", COMPOSE_PROJECT_NAME=project)
    base = [*compose, "-f", str(ROOT / "deploy" / "compose.yaml")]
    try:
        up = run([*base, "up", "-d"], timeout=300, env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        coordinator = run([*base, "ps", "-q", "coordinator"], env=env).stdout.strip()
        waited = run(["docker", "wait", coordinator], timeout=1500)
        logs = run([*base, "logs", "--no-color"], env=env, timeout=120).stdout
        (tmp_path / "compose.log").write_text(logs)
        assert waited.stdout.strip() == "0", logs[-6000:]
        summary = run(["docker", "run", "--rm", "--network", "host", "-v", f"{project}_runs:/runs", image,
                       "cat", "/runs/compose/summary.json"])
        summary = json.loads(summary.stdout)
        assert summary["status"] == "ok" and summary["rounds_completed"] == [1], summary
        assert summary["secure_aggregation"] is True
        assert sorted(summary["privacy"]) == ["A", "B", "C"]
        assert all("differential privacy" in line and "NO differential" not in line
                   for line in summary["privacy"].values())
        assert "TLS" in logs and "round 1/1 | accuracy" in logs
    finally:
        run([*base, "down", "-v", "--remove-orphans"], timeout=300, env=env)
