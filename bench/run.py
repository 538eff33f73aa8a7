"""Run the benchmark suite for one profile, then render its summary and plots.

    python bench/run.py --profile quick|full [--out DIR] [--only NAME,...]

Each benchmark runs as `python bench/NAME.py --profile P --out DIR` in its own process, one after
the other (they would compete for the same cores otherwise), and writes DIR/NAME.json. A
benchmark that fails is recorded in DIR/RUN.json and the summary, the others still run, and the
runner exits non-zero at the end. The results it is about to produce are removed from DIR first,
so a failed benchmark can never leave an earlier run's numbers in the summary. Default DIR:
bench/results/PROFILE (quick never overwrites the committed full results).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from harness import REPO, bench_args, bench_header, log, out_dir, write_result

BENCH = REPO / "bench"
# name -> profiles it runs in. dp_speed and secagg_overhead take too long for the quick smoke run
# (they stay runnable on their own: `make bench-dp`, `python bench/secagg_overhead.py`).
SUITE = {
    "utility": ("quick", "full"),
    "fairness": ("quick", "full"),
    "ner": ("quick", "full"),
    "privacy_audit": ("quick", "full"),
    "redaction": ("quick", "full"),
    "head_features": ("quick", "full"),
    "private_head": ("quick", "full"),
    "small_sites": ("full",),  # quick: tests/test_dp_learning.py runs the same federation in the suite
    "dp_tuning": ("full",),
    "server_optimizer": ("full",),  # quick: python bench/server_optimizer.py --profile quick
    "dp_data_size": ("full",),
    "scale": ("quick", "full"),
    "traffic": ("quick", "full"),
    "round_efficiency": ("quick", "full"),  # run only where bench/round_efficiency.py exists
    "dp_speed": ("full",),
    "secagg_overhead": ("full",),
}


def earlier_entries(run_json: Path, rerun: list[str]) -> list[dict]:
    """The entries of an earlier RUN.json for benchmarks not in ``rerun``, with the start of the run
    that made them (their results keep their own headers)."""
    if not run_json.exists():
        return []
    try:
        old = json.loads(run_json.read_text())
        return [{**s, "run_started_utc": s.get("run_started_utc", old["header"]["started_utc"])}
                for s in old["scripts"] if s["name"] not in rerun]
    except (ValueError, KeyError, TypeError):  # unreadable: the new run's entries stand alone
        return []


def main() -> int:
    p = bench_args(__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated benchmark names (default: the profile's suite)")
    args = p.parse_args()
    target = out_dir(args)
    wanted = [n for n in args.only.split(",") if n] or [n for n, profiles in SUITE.items() if args.profile in profiles]
    unknown = [n for n in wanted if not (BENCH / f"{n}.py").exists() and n not in SUITE]
    if unknown:
        p.error(f"no benchmark named {', '.join(unknown)}")
    header = bench_header("run", args.profile, [])
    target.mkdir(parents=True, exist_ok=True)
    (target / "logs").mkdir(exist_ok=True)
    # A full profile takes hours, so it is often run a few benchmarks at a time (--only): the entries
    # of the benchmarks not run now are kept, each marked with the run it came from.
    earlier = earlier_entries(target / "RUN.json", wanted)
    # The results this run will write are removed first, so none can be left over from an earlier run
    # (git keeps the committed ones); any other result in DIR keeps its own header and date.
    for name in [*wanted, "RUN", "SUMMARY"]:
        for old in (target / f"{name}.json", target / f"{name}.png", target / f"{name}.md",
                    target / "logs" / f"{name}.log"):
            old.unlink(missing_ok=True)

    scripts = []
    for name in wanted:
        script = BENCH / f"{name}.py"
        if not script.exists():
            log(f"bench: {name}: {script.relative_to(REPO)} does not exist, skipped")
            scripts.append({"name": name, "status": "skipped", "reason": "script not present"})
            continue
        log(f"bench: {name} ({args.profile}) ...")
        started = time.monotonic()
        with open(target / "logs" / f"{name}.log", "w") as log_file:
            # Progress lines go to the console and to the log; the child's stderr is merged in.
            proc = subprocess.Popen([sys.executable, str(script), "--profile", args.profile, "--out", str(target),
                                     "--device", args.device],
                                    cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:
                log_file.write(line)
                if line.startswith("["):  # the benchmarks' own progress lines (common.log), not library chatter
                    print(f"  {name}: {line.rstrip()}", flush=True)
            rc = proc.wait()
        seconds = round(time.monotonic() - started, 1)
        result = target / f"{name}.json"
        status = "ok" if rc == 0 and result.exists() else "failed"
        entry = {"name": name, "status": status, "returncode": rc, "wall_seconds": seconds,
                 "result": result.name if result.exists() else None, "log": f"logs/{name}.log"}
        if status == "failed":
            lines = (target / "logs" / f"{name}.log").read_text(errors="replace").splitlines()
            entry["log_tail"] = "\n".join(lines[-20:])
        scripts.append(entry)
        log(f"bench: {name}: {status} in {seconds} s")

    for entry in scripts:
        entry["run_started_utc"] = header["started_utc"]
    write_result(target, "RUN", {"header": header, "scripts": scripts + earlier})
    render = subprocess.run([sys.executable, str(BENCH / "render.py"), "--dir", str(target)], cwd=REPO)
    failed = [s["name"] for s in scripts if s["status"] == "failed"]
    if render.returncode != 0:
        failed.append("render")
    log(f"bench: {args.profile} profile done in {round(time.monotonic() - _start, 1)} s; "
        f"summary {target / 'SUMMARY.md'}"
        + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


_start = time.monotonic()

if __name__ == "__main__":
    raise SystemExit(main())
