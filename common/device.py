"""Where a site computes: `--device auto|cpu|cuda|cuda:N`, resolved once, refused clearly.

`auto` (the default) takes CUDA when torch sees a device, else the CPU. The device is the site's
own setting (fl-client --device, fl-sim --device for every virtual site): it never comes from the
coordinator, and nothing about it changes what a site sends beyond its report's `device` field.
Under Ray with --gpus-per-site, Ray sets CUDA_VISIBLE_DEVICES per worker, so `cuda` there means
the GPU share Ray gave that worker.
"""

from __future__ import annotations

import re
import resource
import sys

import torch

from common.errors import FedSiloError

DEVICE_HELP = ("where the site computes: 'auto' (CUDA when torch sees one, else the CPU), 'cpu', "
               "'cuda' or 'cuda:N' (GPU N) [default: auto]")
_SPEC = re.compile(r"^(auto|cpu|cuda(:\d{1,3})?)$")


def check_spec(spec: str) -> str:
    """The spelling alone (argparse `type=`): machine facts are checked by resolve()."""
    spec = str(spec).strip().lower()
    if not _SPEC.match(spec):
        raise FedSiloError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N")
    return spec


def resolve(spec: str = "auto") -> torch.device:
    """The torch device for `spec`; CUDA asked for where torch sees none is one clear error."""
    spec = check_spec(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = ("this torch is a CPU-only build" if torch.version.cuda is None
               else f"torch (CUDA {torch.version.cuda}) finds no usable GPU or driver")
        raise FedSiloError(f"--device {spec}: no CUDA device here ({why}); use --device cpu or auto")
    index = int(spec.split(":")[1]) if ":" in spec else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise FedSiloError(f"--device {spec}: this machine has {count} CUDA device(s) (0..{count - 1})")
    return torch.device("cuda", index)


def describe(device: torch.device) -> str:
    """For the console: 'cpu' or 'cuda:0 (NVIDIA H100 80GB HBM3, 79.1 GiB)'."""
    if device.type != "cuda":
        return str(device)
    props = torch.cuda.get_device_properties(device)
    return f"{device} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"


def of(model: torch.nn.Module) -> torch.device:
    """The device a model's weights live on."""
    return next(model.parameters()).device


def ray_node() -> str | None:
    """The Ray node this process runs on, inside a Ray worker (simulation); else None."""
    ray = sys.modules.get("ray")  # never imported here: only a process Ray started has it
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, float]:
    """The process's peak resident memory (MiB) and, on CUDA, the device's peak allocation since
    reset_peak (MiB): what a site reports next to its timings."""
    per_mib = 2**20 if sys.platform == "darwin" else 2**10  # ru_maxrss: bytes on macOS, KiB on Linux
    out = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mib, 1)}
    if device.type == "cuda":
        out["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out
