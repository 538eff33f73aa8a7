"""Bytes per site per round on the wire: LoRA vs full model, with and without SecAgg+.

Measured, not computed: a real deployment (fl-server, and one fl-client per site, on 127.0.0.1)
where every site reaches the coordinator through its own byte-counting TCP relay. The relay
timestamps every chunk in each direction. A run has two rounds; round 2's bytes are those between
the end of round 1 and the end of round 2 (the moments the coordinator appends each round's line
to metrics.jsonl), so connection set-up, registration and the app bundle download (round 1) are
left out. What is counted is everything the site's SuperNode exchanges in that window: gRPC
(HTTP/2) framing, polling and heartbeats included; plaintext on loopback (TLS would add its
record overhead, well under 1% for large messages). Next to each measurement: the expectation
from the parameter count (4 bytes per trainable value; per round the global weights travel down
twice - train, evaluate - and one update travels up).

    python bench/traffic.py --profile quick|full [--out DIR]
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import bench_args, bench_header, device_flags, log, out_dir, tail, use_device, write_result

from common.launch import stop  # noqa: E402 (harness put the repository on sys.path)

BIN = Path(sys.executable).parent
SITES = 2
RECORDS_PER_SITE = 40
SEED = 42
ROUNDS = 2  # round 2 is the one measured
LABELS = "account,card,loan,transfer"  # the demo data's topics
# quick: the tiny BERT (the harness, fast); full: the embedded MiniLM, the model users run.
MODEL = {"quick": "tiny", "full": ""}
# (trainable, SecAgg+); quick measures FedSilo's default (LoRA, SecAgg+) only, full every pair.
CONFIGS = {"quick": [("lora", True)],
           "full": [("lora", False), ("lora", True), ("full", False), ("full", True)]}
RUN_TIMEOUT = 900.0


class Relay:
    """A TCP relay from a local port to `upstream`, logging (time, bytes) per direction."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.chunks = {"up": [], "down": []}  # up: site -> coordinator
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, "down"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while data := src.recv(1 << 16):
                now = time.time()
                dst.sendall(data)
                with self.lock:
                    self.chunks[direction].append((now, len(data)))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def bytes_between(self, start: float, end: float) -> dict[str, int]:
        with self.lock:
            return {d: sum(n for t, n in chunks if start < t <= end) for d, chunks in self.chunks.items()}

    def close(self) -> None:
        self.server.close()


def trainable_values(model: str, trainable: str) -> int:
    """Trainable parameter count of FedSilo's model for this choice (what each message carries)."""
    from common.config import RunConfig
    from common.model import build_model

    cfg = RunConfig.from_dict({"labels": LABELS, "model": model, "trainable": trainable})
    return sum(p.numel() for p in build_model(cfg).parameters() if p.requires_grad)


def start(cmd: list[str], log_path: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"fl-server exited ({proc.returncode}) before it was ready:\n{tail(path)}")
        time.sleep(0.3)
    raise RuntimeError(f"fl-server not ready within {timeout:.0f} s:\n{tail(path)}")


def one_run(model: str, trainable: str, secure: bool, data: list[Path], work: Path) -> dict:
    """Two rounds of a real federation; returns each site's bytes in round 2."""
    from common.launch import free_port

    name = f"{trainable}-{'secagg' if secure else 'plain'}"
    port, run_dir = free_port(), work / f"run-{name}"
    server_log = work / f"server-{name}.log"
    server = start([str(BIN / "fl-server"), "run", "--insecure", "--port", str(port), "--run-dir", str(run_dir),
                    "--labels", LABELS, "--model", model, "--rounds", str(ROUNDS), "--min-sites", str(SITES),
                    "--trainable", trainable, "--batch-size", "16", "--seed", str(SEED),
                    "--secure-aggregation" if secure else "--no-secure-aggregation"], server_log)
    relays, clients = [], []
    try:
        wait_for(server_log, "waiting for", server, 120)
        for i, path in enumerate(data):
            relays.append(Relay(("127.0.0.1", port)))
            clients.append(start([str(BIN / "fl-client"), "--site", f"site-{i + 1}", "--insecure",
                                  "--server", f"127.0.0.1:{relays[-1].port}", "--data", str(path),
                                  "--ledger", str(work / f"{name}-site-{i + 1}.ledger.json"), "--no-dp",
                                  *(["--allow-model", model] if model else []),
                                  *([] if secure else ["--allow-unmasked-updates"]), *device_flags()],
                                 work / f"client-{name}-{i + 1}.log"))
        # Round ends: the moment the coordinator appends each round's line to metrics.jsonl.
        metrics, ends = run_dir / "metrics.jsonl", []
        deadline = time.monotonic() + RUN_TIMEOUT
        while server.poll() is None and time.monotonic() < deadline:
            lines = metrics.read_text().count("\n") if metrics.exists() else 0
            if lines > len(ends):
                ends.append(metrics.stat().st_mtime)  # the append's own time, not when we noticed it
            time.sleep(0.1)
        if server.poll() is None:
            raise RuntimeError(f"no result within {RUN_TIMEOUT:.0f} s:\n{tail(server_log)}")
        lines = metrics.read_text().count("\n") if metrics.exists() else 0
        while len(ends) < lines:  # a last line written just before the server exited
            ends.append(metrics.stat().st_mtime)
        if server.returncode != 0 or len(ends) < ROUNDS:
            raise RuntimeError(f"fl-server exited {server.returncode} after {len(ends)} rounds:\n{tail(server_log)}")
        return {f"site-{i + 1}": relay.bytes_between(ends[ROUNDS - 2], ends[ROUNDS - 1])
                for i, relay in enumerate(relays)} | {"round_seconds": round(ends[ROUNDS - 1] - ends[ROUNDS - 2], 2)}
    finally:
        for proc in (*clients, server):
            stop(proc)  # FedSilo's own: also the process groups Flower starts below them
        for relay in relays:
            relay.close()


def main() -> int:
    args = use_device(bench_args(__doc__.splitlines()[0]).parse_args())
    header = bench_header("traffic", args.profile, [SEED])
    rows, failed = [], False
    with tempfile.TemporaryDirectory(prefix="bench-traffic-") as work:
        work = Path(work)
        from common.demo_data import write_demo

        data = write_demo(work / "data", sites=SITES, per_site=RECORDS_PER_SITE, seed=SEED)
        from common.model import save_tiny_bert  # imports torch: only when needed
        model = str(save_tiny_bert(work / "tiny-bert")) if MODEL[args.profile] == "tiny" else MODEL[args.profile]
        values = {t: trainable_values(model, t) for t in ("lora", "full")}
        for trainable, secure in CONFIGS[args.profile]:
            label = f"{trainable}, {'SecAgg+' if secure else 'plain FedAvg'}"
            log(f"traffic: {label} ({values[trainable]:,} trainable values), {ROUNDS} rounds ...")
            row = {"trainable": trainable, "secure_aggregation": secure, "trainable_values": values[trainable],
                   # parameter-count expectation: float32 weights down twice (train, evaluate), one update up
                   "expected_down_bytes": 2 * 4 * values[trainable], "expected_up_bytes": 4 * values[trainable]}
            try:
                measured = one_run(model, trainable, secure, data, work)
            except Exception as err:  # noqa: BLE001 - record it, go on with the other configurations
                failed = True
                row.update(status="failed", error=str(err)[-3000:])
                log(f"traffic:   -> failed: {str(err).splitlines()[0]}")
                rows.append(row)
                continue
            sites = {k: v for k, v in measured.items() if k.startswith("site-")}
            row.update(status="ok", round_seconds=measured["round_seconds"], sites=sites,
                       down_bytes_per_site=round(sum(s["down"] for s in sites.values()) / len(sites)),
                       up_bytes_per_site=round(sum(s["up"] for s in sites.values()) / len(sites)))
            row["measured_vs_expected"] = {
                "down": round(row["down_bytes_per_site"] / row["expected_down_bytes"], 3),
                "up": round(row["up_bytes_per_site"] / row["expected_up_bytes"], 3)}
            # What the parameter count does not explain: the transport's framing and many small
            # requests, polling, heartbeats - and, under SecAgg+, keys, shares and the masked encoding.
            row["overhead_bytes_per_site"] = (row["down_bytes_per_site"] + row["up_bytes_per_site"]
                                              - row["expected_down_bytes"] - row["expected_up_bytes"])
            log(f"traffic:   -> per site in round {ROUNDS}: {row['down_bytes_per_site']:,} B down, "
                f"{row['up_bytes_per_site']:,} B up")
            rows.append(row)
    by = {(r["trainable"], r["secure_aggregation"]): r for r in rows if r["status"] == "ok"}
    ratios = {}
    for secure in (False, True):
        if ("lora", secure) in by and ("full", secure) in by:
            ratios[f"full_vs_lora_{'secagg' if secure else 'plain'}_total"] = round(
                (by[("full", secure)]["down_bytes_per_site"] + by[("full", secure)]["up_bytes_per_site"])
                / (by[("lora", secure)]["down_bytes_per_site"] + by[("lora", secure)]["up_bytes_per_site"]), 2)
    for trainable in ("lora", "full"):
        if (trainable, False) in by and (trainable, True) in by:
            ratios[f"secagg_vs_plain_{trainable}_up"] = round(
                by[(trainable, True)]["up_bytes_per_site"] / by[(trainable, False)]["up_bytes_per_site"], 3)
    payload = {
        "header": header,
        "setup": {"model": "tiny BERT (2 layers, hidden 32, random weights)" if MODEL[args.profile] == "tiny"
                  else "all-MiniLM-L6-v2 (embedded)",
                  "engine": "deployment: fl-server --insecure + one fl-client per site on 127.0.0.1",
                  "sites": SITES, "records_per_site": RECORDS_PER_SITE, "rounds": ROUNDS, "measured_round": ROUNDS,
                  "site_options": "--no-dp (DP changes no message size beyond a few metrics)",
                  "measurement": "bytes through a per-site TCP relay between the end of round 1 and the end of "
                                 "round 2, each direction; plaintext gRPC"},
        "rows": rows,
        "ratios": ratios,
    }
    path = write_result(out_dir(args), "traffic", payload)
    log(f"traffic: wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
