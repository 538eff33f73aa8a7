"""Shared pieces of the benchmark suite: the header every result carries, and the atomic writer.

Every benchmark script follows one convention: ``python bench/NAME.py --profile quick|full --out DIR``
writes ``DIR/NAME.json`` (via :func:`write_result`) and prints progress lines. The header names the
machine, the commit, the profile and the seeds, so no figure rendered from the JSON can lose them.

A script imports this module first (``from harness import ...``): it puts the repository on
sys.path, so that ``common``, ``client`` and ``server`` are FedSilo's own packages.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROFILES = ("quick", "full")


def machine() -> dict:
    """CPU model, logical cores and RAM, read from /proc (not from a hand-written label)."""
    cpu, ram_kb = platform.processor() or platform.machine(), 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_kb = int(line.split()[1])
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "ram_gib": round(ram_kb / 2**20, 1), "arch": platform.machine(),
            "os": f"{platform.system()} {platform.release()}"}


def commit() -> str:
    """Short HEAD, plus "+dirty" when tracked or untracked files differ (read-only: no index refresh).
    bench/results is left out: a run rewrites its own committed results while it goes."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--", ".", ":(exclude)bench/results") else "")


def _load_average() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def bench_header(name: str, profile: str, seeds: list[int]) -> dict:
    """What every result file starts with; ``started_utc`` also lets write_result time the run."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, not {profile!r}")
    return {
        "benchmark": name,
        "profile": profile,
        "seeds": list(seeds),
        "machine": machine(),
        "device": DEVICE,  # --device as given (auto: CUDA where torch sees it)
        "commit": commit(),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # Timings depend on what else the machine runs: the 1/5/15-minute load averages at the start.
        "load_average_at_start": _load_average(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "flwr": _version("flwr"),
        "transformers": _version("transformers"),
        "opacus": _version("opacus"),
    }


def write_result(out_dir: Path, name: str, payload: dict) -> Path:
    """Write ``out_dir/name.json`` atomically (temp file + rename), so a killed run never leaves half a file.

    ``payload`` must carry ``"header"`` (from bench_header); ``wall_seconds`` is added from the header's
    start time unless the payload already has it.
    """
    if "header" not in payload:
        raise ValueError("payload needs the 'header' from bench_header()")
    payload = dict(payload)
    started = datetime.fromisoformat(payload["header"]["started_utc"])
    now = datetime.now(timezone.utc)
    payload.setdefault("wall_seconds", round((now - started).total_seconds(), 1))
    payload["finished_utc"] = now.isoformat(timespec="seconds")
    payload["load_average_at_end"] = _load_average()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


DEVICE = "auto"  # the run's --device; each script sets it from its arguments (use_device)


def use_device(args: argparse.Namespace) -> argparse.Namespace:
    """Take the script's --device for every fl-sim and fl-client it starts (device_flags)."""
    global DEVICE
    DEVICE = args.device
    return args


def device_flags() -> list[str]:
    return ["--device", DEVICE]


def device_spec() -> str:
    return DEVICE


def bench_args(description: str) -> argparse.ArgumentParser:
    """The two options every benchmark takes; a script may add its own before parse_args()."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--profile", choices=PROFILES, default="quick")
    p.add_argument("--out", type=Path, default=None, help="result folder (default bench/results/PROFILE)")
    p.add_argument("--device", default="auto", help="where the model computes: auto, cpu, cuda or cuda:N (passed to "
                   "fl-sim and fl-client as --device; 'auto' takes CUDA when torch sees it) [default: auto]")
    return p


def subset(value: str, allowed: list, name: str, parser: argparse.ArgumentParser) -> list[str]:
    """--NAME a,b: a comma-separated subset of the profile's list, as strings (all of it when empty)."""
    allowed = [str(a) for a in allowed]
    if not value:
        return allowed
    picked = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in picked if v not in allowed]
    if unknown:
        parser.error(f"--{name}: {', '.join(unknown)} not in this profile ({', '.join(allowed)})")
    return picked


def earlier_rows(path: Path, profile: str, key, rerun: set) -> tuple[list[dict], dict]:
    """A benchmark run in parts: the rows an earlier run of this profile left in `path` whose
    key(row) is not in `rerun`, each tagged with the run that measured it, and that file's payload
    ({} when there is none, it is another profile's, or it cannot be read: git keeps the committed one)."""
    try:
        old = json.loads(path.read_text())
        if old["header"]["profile"] != profile:
            return [], {}
        run = {"commit": old["header"]["commit"], "started_utc": old["header"]["started_utc"]}
        return [{**r, "run": r.get("run", run)} for r in old["rows"] if key(r) not in rerun], old
    except (OSError, ValueError, KeyError, TypeError):
        return [], {}


def out_dir(args: argparse.Namespace) -> Path:
    return args.out if args.out is not None else REPO / "bench" / "results" / args.profile


def run_measured(cmd: list[str], timeout: float, log_path: Path, every: float = 0.5) -> dict:
    """Run `cmd` with its output in `log_path`, sampling the memory of its whole process tree.

    Flower's simulation spreads over many processes (SuperLink, the simulation process, Ray's
    raylet, GCS and workers), so the peak is taken over the sum of all descendants: PSS (shared
    pages split between the processes that share them; what the tree really holds) and RSS
    (shared pages counted in every process; an upper bound). A run past `timeout` is killed.
    """
    import psutil

    started = time.monotonic()
    peak_pss = peak_rss = 0
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        root = psutil.Process(proc.pid)
        timed_out = False
        while proc.poll() is None:
            pss = rss = 0
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                tree = []
            for p in tree:
                try:
                    info = p.memory_full_info()
                    pss, rss = pss + getattr(info, "pss", info.rss), rss + info.rss
                except psutil.Error:
                    pass  # a process that ended between listing and reading
            peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
            if time.monotonic() - started > timeout:
                timed_out = True
                _kill_tree(root)
                break
            time.sleep(every)
        rc = proc.wait()
    return {"returncode": rc, "timed_out": timed_out, "wall_seconds": round(time.monotonic() - started, 1),
            "peak_pss_gib": round(peak_pss / 2**30, 3), "peak_rss_gib": round(peak_rss / 2**30, 3)}


def run_deployment(work: Path, files: list[Path], server_args: list, client_args: list,
                   timeout: float = 3 * 3600) -> Path:
    """A federation on the deployment engine, run to its end: fl-server on 127.0.0.1 (plaintext)
    and one fl-client per data file (site name = the file's stem, ledger in `work`). Logs go to
    work/NAME.log; returns the run directory (work/run). A failed server raises with its log's tail."""
    from common.launch import die_with_parent, free_port, stop

    port, run_dir, bin_dir = free_port(), work / "run", Path(sys.executable).parent
    logs = {name: open(work / f"{name}.log", "w") for name in ("server", *(f.stem for f in files))}

    def spawn(cmd, name):
        return subprocess.Popen([str(bin_dir / cmd[0]), *map(str, cmd[1:])], stdout=logs[name],
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=die_with_parent)

    server = spawn(["fl-server", "--insecure", "--port", port, "--run-dir", run_dir, *server_args], "server")
    clients = []
    try:
        deadline = time.monotonic() + 120
        while "waiting for" not in (work / "server.log").read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("fl-server did not start:\n" + tail(work / "server.log", 30))
            time.sleep(0.5)
        for path in files:
            clients.append(spawn(["fl-client", "--site", path.stem, "--server", f"127.0.0.1:{port}", "--insecure",
                                  "--data", path, "--ledger", work / f"{path.stem}.ledger.json",
                                  *client_args, *device_flags()], path.stem))
        code = server.wait(timeout=timeout)
    finally:
        for proc in (server, *clients):
            stop(proc)
        for fh in logs.values():
            fh.close()
    if code != 0:
        raise RuntimeError(f"fl-server exited with {code}:\n" + tail(work / "server.log", 40))
    return run_dir


def _kill_tree(root) -> None:
    import psutil

    procs = [root, *root.children(recursive=True)]
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log, for a failure record."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def log(*parts: object) -> None:
    """A progress line with elapsed time since the process started, flushed at once."""
    print(f"[{time.monotonic() - _T0:7.1f}s]", *parts, flush=True)


_T0 = time.monotonic()
if str(REPO) not in sys.path:  # so `python bench/x.py` can import client/, common/, server/
    sys.path.insert(0, str(REPO))
