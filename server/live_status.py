"""live.json: where a running ServerApp stands, for `fl-server status` (server/run_status.py).

The ServerApp rewrites it (atomically) when it sends an instruction to the sites, when replies
come in, and while it waits for sites to connect. It holds counts and node ids only, never a
value a site sent. `coordinator` is the identity ('PID:START') of the fl-server / fl-sim that
started the run: the run is live while that process is.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from common.files import atomic_write_json
from common.launch import COORDINATOR_ENV

LIVE_FILE = "live.json"
MIN_INTERVAL_S = 1.0  # a poll loop calls update() often; the file changes at most this often


class LiveStatus:
    def __init__(self, run_dir: Path, rounds: int, min_sites: int):
        self.path = Path(run_dir) / LIVE_FILE
        self.state = {"coordinator": os.environ.get(COORDINATOR_ENV) or None, "serverapp_pid": os.getpid(),
                      "rounds": rounds, "min_sites": min_sites, "round": None, "phase": "starting",
                      "sites_connected": 0, "asked": 0, "replied": 0, "started_at": time.time()}
        self._written = 0.0
        self.update(force=True)

    def update(self, force: bool = False, **changes) -> None:
        changed = any(self.state.get(k) != v for k, v in changes.items())
        new_phase = changes.get("phase", self.state["phase"]) != self.state["phase"]
        self.state.update(changes)
        now = time.monotonic()
        if force or new_phase or (changed and now - self._written >= MIN_INTERVAL_S):
            self.state["updated_at"] = time.time()
            try:
                atomic_write_json(self.path, self.state)
            except OSError:
                return  # a status file never stops a run
            self._written = now

    def connected(self, node_ids) -> None:
        count = len(list(node_ids))
        if self.state["round"] is None and self.state["phase"] in ("starting", "waiting for sites"):
            self.update(sites_connected=count, phase="waiting for sites")
        else:
            self.update(sites_connected=count)

    def asking(self, messages: list) -> None:
        """Instructions are about to go out: the round and the step come from Flower's messages
        (group id = the round; message type = train / evaluate / a SecAgg+ stage)."""
        if not messages:
            return
        meta = messages[0].metadata
        group = str(meta.group_id or "")
        step = str(meta.message_type).split(".")[-1]
        configs = getattr(messages[0].content, "config_records", {})
        stage = configs["secaggplus_configs"].get("stage") if "secaggplus_configs" in configs else None
        phase = f"{step} (SecAgg+ {stage})" if stage else step
        self.update(round=int(group) if group.isdigit() else self.state["round"], phase=phase,
                    asked=len(messages), replied=0)

    def finished(self, status: str) -> None:
        self.update(phase=f"finished ({status})")
