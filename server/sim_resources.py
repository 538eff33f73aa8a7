"""What fl-sim asks of Ray: this machine or an existing cluster, and each virtual site's share.

Flower's simulation engine starts Ray itself (`ray.init()` in its simulation process). With
--ray-address that process gets RAY_ADDRESS, so the same call joins the running cluster instead;
Ray then refuses to be told the cluster's size, so only the per-site resources are passed.
Ray hides every GPU from a worker that reserved none (CUDA_VISIBLE_DEVICES=""), so a virtual site
computes on a GPU only with --gpus-per-site > 0, and then on the GPU share Ray gave it.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass

import torch

from common import device as devices
from common.errors import FedSiloError


@dataclass(frozen=True)
class SimResources:
    device: str  # what every virtual site resolves (common/device.py): auto, cpu or cuda
    cpus_per_site: int
    gpus_per_site: float
    ray_address: str | None  # HOST:PORT of a running cluster's GCS; None: a local Ray of our own

    def federation_config(self, sites: int) -> str:
        """Flower's --federation-config for the simulation run."""
        parts = [f"num-supernodes={sites}", f"client-resources-num-cpus={self.cpus_per_site}",
                 f"client-resources-num-gpus={self.gpus_per_site:g}"]
        if self.ray_address is None:  # a cluster of our own: as large as this machine
            parts.append(f"init-args-num-cpus={max(1, os.cpu_count() or 1)}")
        return " ".join(parts)

    def env(self) -> dict[str, str]:
        """Variables for the SuperLink (and the simulation process it starts)."""
        # "local": without --ray-address, a Ray of our own, even where the shell sets RAY_ADDRESS or
        # `ray start` left a cluster on this machine (ray.init() would otherwise join either).
        return {"RAY_ADDRESS": self.ray_address or "local"}

    def describe(self) -> str:
        where = f"the Ray cluster at {self.ray_address}" if self.ray_address else "a local Ray"
        gpus = f", {self.gpus_per_site:g} GPU" if self.gpus_per_site else ""
        return f"{where}; each virtual site {self.cpus_per_site} CPU{gpus}, device {self.device}"


def plan(device: str, cpus_per_site: int, gpus_per_site: float | None, ray_address: str | None,
         sites: int) -> SimResources:
    """Checked per-site resources; refusals are one clear line each."""
    spec = devices.check_spec(device)
    if spec.startswith("cuda:"):
        raise FedSiloError(f"fl-sim --device {spec}: Ray gives each virtual site its GPU (--gpus-per-site); "
                           "use --device cuda")
    if cpus_per_site < 1:  # Flower's simulation config holds whole CPUs
        raise FedSiloError(f"--cpus-per-site {cpus_per_site}: give a whole number of CPUs, at least 1")
    if gpus_per_site is not None and not (math.isfinite(gpus_per_site) and 0.0 <= gpus_per_site <= 64):
        raise FedSiloError(f"--gpus-per-site {gpus_per_site}: give a share from 0 to 64 (0.25 = four sites per GPU)")
    if ray_address:
        ray_address = _reachable(ray_address)
        gpus = gpus_per_site if gpus_per_site is not None else 0.0  # the cluster's GPUs are unknown here
    else:
        local = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if spec == "cuda":
            devices.resolve("cuda")  # CUDA where there is none: one line, exit 2
        if (gpus_per_site or 0) > 0 and local == 0:
            raise FedSiloError(f"--gpus-per-site {gpus_per_site:g}: torch sees no GPU on this machine "
                               "(give --ray-address to use a cluster's GPUs)")
        if gpus_per_site is None:  # share this machine's GPUs among the sites that run at once
            running = max(1, min(sites, (os.cpu_count() or 1) // cpus_per_site))
            gpus = 0.0 if spec == "cpu" or local == 0 else min(1.0, round(local / running, 4))
        else:
            gpus = gpus_per_site
    if spec == "cuda" and gpus == 0:
        raise FedSiloError("fl-sim --device cuda: give --gpus-per-site (Ray hides GPUs from virtual sites "
                           "that reserve none)")
    return SimResources("cpu" if gpus == 0 and spec == "auto" else spec, cpus_per_site, gpus, ray_address)


def _reachable(address: str) -> str:
    """HOST:PORT of a Ray cluster's GCS, checked to answer now (not a hang in Ray's start)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FedSiloError(f"--ray-address {address!r}: expected HOST:PORT (the head node's GCS, as `ray start "
                           "--head` printed it)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as err:
        raise FedSiloError(f"--ray-address {address}: no Ray cluster answers there ({err.strerror or err})") from None
    return f"{host}:{port}"
