"""GPU check: DP-LoRA and LoRA steps on CUDA against the CPU, then a short deployment-mode federation
on CUDA (fl-server's SuperLink and two fl-client SuperNodes on 127.0.0.1, SecAgg+ and DP on, no Ray).

On a GPU machine with CUDA torch but no registry access, from the repository root, with the
folder bench/gpu_pack.py made here carried along (wheels and the MiniLM's shape, under 60 MiB):

    python3 bench/gpu_check.py --pack .gpu [--out DIR]

Here, to check the script itself without a GPU: `python bench/gpu_check.py --device cpu` (the CUDA
rows are then absent). The model is MiniLM's shape with seeded random weights (its trained weights
are 90 MB, too much to carry): step times are those of the real model; the federation's accuracy
is not a result. Results: DIR/gpu_check.json (default bench/results/gpu). Planned for under
8 minutes: 2 x 2 timed configurations of 6 steps, and a 2-round federation of 2 x 200 records.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SITE_PACKAGES = Path("/tmp/fedsilo-gpu-site")  # where --pack installs the carried wheels
TOOLS = {"fl-server": "server.cli", "fl-client": "client.cli"}
SPEED = [("non-private LoRA", "0"), ("DP LoRA (hooks)", "1")]
TOKENS, BATCH, STEPS = 128, 32, 6
LABELS = "account,card,loan,transfer"


def install(pack: Path) -> dict[str, str]:
    """The carried wheels into SITE_PACKAGES (no index, no dependencies: torch and the rest are the
    machine's), FedSilo's two tools beside Flower's scripts; returns the environment to run in."""
    wheels = sorted(str(w) for w in (pack / "wheels").glob("*.whl"))
    if not wheels:
        sys.exit(f"gpu_check: no wheels in {pack / 'wheels'} (make them with bench/gpu_pack.py)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", str(SITE_PACKAGES), *wheels], check=True)
    bin_dir = SITE_PACKAGES / "bin"
    for tool, module in TOOLS.items():
        script = bin_dir / tool
        script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import main\nsys.exit(main())\n")
        script.chmod(0o755)
    return {"PYTHONPATH": os.pathsep.join([str(SITE_PACKAGES), str(REPO)]),
            "PATH": os.pathsep.join([str(bin_dir), os.environ["PATH"]])}


def shaped_model(shape: Path | None, out: Path) -> Path:
    """MiniLM's config and tokenizer with seeded random weights, saved at `out`."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    from common.model import resolve_model
    from gpu_pack import MODEL_FILES  # what the pack carries of the model (bench/ is this script's folder)

    source = shape or Path(resolve_model(""))
    out.mkdir(parents=True, exist_ok=True)
    for f in MODEL_FILES:
        if (source / f).exists():
            shutil.copy2(source / f, out / f)
    torch.manual_seed(0)
    BertModel(BertConfig.from_pretrained(out)).save_pretrained(out)
    return out


def speed(model: Path, devices: list[str]) -> list[dict]:
    rows = []
    for device in devices:
        for name, dp in SPEED:
            out = subprocess.run([sys.executable, str(REPO / "bench" / "dp_speed.py"), "--child", "lora", dp, "0",
                                  str(TOKENS), str(BATCH), str(STEPS), device, str(model)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                rows.append({"config": name, "device": device, "status": "failed", "log_tail": out.stderr[-1500:]})
            else:
                rows.append({"config": name, **json.loads(out.stdout.splitlines()[-1]), "status": "ok"})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def tool(name: str) -> str:
    """A FedSilo tool: installed with this Python, else the wrapper install() put on PATH."""
    import shutil

    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def federation(model: Path, device: str, work: Path) -> dict:
    from common.demo_data import write_demo
    from common.launch import free_port, stop

    data = work / "data"
    write_demo(data, sites=2, per_site=200, seed=11)
    port, run_dir = free_port(), work / "run"
    logs = {n: open(work / f"{n}.log", "w") for n in ("server", "A", "B")}
    started = time.monotonic()
    server = subprocess.Popen([tool("fl-server"), "--insecure", "--port", str(port), "--run-dir", str(run_dir),
                               "--labels", LABELS, "--model", str(model), "--rounds", "2", "--min-sites", "2",
                               "--round-timeout", "240"], stdout=logs["server"], stderr=subprocess.STDOUT,
                              start_new_session=True)
    sites = []
    try:
        while "waiting for" not in (work / "server.log").read_text():
            if server.poll() is not None or time.monotonic() - started > 120:
                return {"status": "fl-server did not start", "log_tail": (work / "server.log").read_text()[-2000:]}
            time.sleep(0.5)
        for name in ("A", "B"):
            sites.append(subprocess.Popen([tool("fl-client"), "--site", name, "--insecure", "--server", f"127.0.0.1:{port}",
                                           "--data", str(data / f"site-{name}.tsv"), "--device", device,
                                           "--allow-model", str(model)], stdout=logs[name],
                                          stderr=subprocess.STDOUT, start_new_session=True))
        code = server.wait(timeout=420)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        for proc in (server, *sites):
            stop(proc)
        for fh in logs.values():
            fh.close()
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] \
        if (run_dir / "metrics.jsonl").exists() else []
    fits = {f"round {r['round']}": {s: {k: f.get(k) for k in ("device", "gpu_peak_mib", "peak_rss_mib", "time_train",
                                                            "epsilon")} for s, f in r.get("fit", {}).items()}
            for r in rounds}
    result = {"status": "ok" if code == 0 else f"fl-server exit {code}", "seconds": round(time.monotonic() - started, 1),
              "device": device, "rounds_ok": [r["round"] for r in rounds if r.get("status") == "ok"], "fit": fits}
    if code != 0:
        result["log_tail"] = {n: (work / f"{n}.log").read_text()[-1500:] for n in ("server", "A", "B")}
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pack", type=Path, default=None, help="the folder bench/gpu_pack.py made (wheels, model shape)")
    p.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run of the script) [default: cuda]")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu")
    args = p.parse_args()
    if args.pack and "FEDSILO_GPU_CHECK_INSTALLED" not in os.environ:
        env = {**os.environ, **install(args.pack.resolve()), "FEDSILO_GPU_CHECK_INSTALLED": "1"}
        return subprocess.run([sys.executable, *sys.argv], env=env).returncode
    sys.path.insert(0, str(REPO))
    import torch

    from common.device import resolve
    from common.errors import FedSiloError

    try:
        device = resolve(args.device)
    except FedSiloError as err:
        print(f"gpu_check: {err}", file=sys.stderr)
        return 2
    started = time.monotonic()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"fedsilo-gpu-check-{os.getpid()}"
    model = shaped_model(args.pack.resolve() / "minilm-shape" if args.pack else None, work / "minilm-shape")
    result = {"benchmark": "gpu_check", "torch": torch.__version__, "cuda": torch.version.cuda,
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "cpu_threads": torch.get_num_threads(), "model": "all-MiniLM-L6-v2's shape, seeded random weights",
              "tokens": TOKENS, "batch": BATCH, "steps": STEPS}
    rows = speed(model, ["cpu", str(device)] if device.type == "cuda" else ["cpu"])
    result["speed"] = rows
    by = {(r["config"], r["device"].split(":")[0]): r.get("samples_per_s") for r in rows}
    result["cuda_over_cpu"] = {name: round(by[(name, "cuda")] / by[(name, "cpu")], 2)
                               for name, _ in SPEED if by.get((name, "cuda")) and by.get((name, "cpu"))}
    result["federation"] = federation(model, str(device), work)
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("gpu_check.json" if device.type == "cuda" else "gpu_check_cpu_dry_run.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    if os.environ.get("OUT"):  # the device tool's folder that comes back
        (Path(os.environ["OUT"]) / path.name).write_text(path.read_text())
    print(json.dumps({k: result[k] for k in ("cuda_over_cpu", "wall_seconds")}), f"-> {path}", flush=True)
    ok = all(r["status"] == "ok" for r in rows) and result["federation"]["status"] == "ok"
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
