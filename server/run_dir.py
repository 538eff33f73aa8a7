"""The run directory: everything a run leaves behind, each file written atomically.

    config.json            resolved run configuration
    labels.json            class id -> label name
    metrics.jsonl          one JSON line per round (accuracy, macro-F1, per-site figures)
    rounds/round-NNNN.npz  global trainable weights after round N
    rounds/momentum-NNNN.npz  the server's momentum buffer after round N (server-momentum > 0)
    rounds/adam-moments-NNNN.npz, yogi-moments-NNNN.npz  m then v of FedAdam / FedYogi after round N
    reports/round-NNNN.json / report.txt   per-class reports, whole federation and per site
    final-model/           the final global model (common.model.load_classifier loads it)
    state.json             checkpoint after every round: rounds done, strategy state (resume)
    summary.json           how the run ended
    command.json           the options of an fl-server run, signed with this coordinator's key
                           (what `fl-server resume` restarts with)

fl-server and fl-sim make the folder and all in it private to the user (0700 / 0600).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import secrets
import tempfile
from pathlib import Path

import numpy as np

from common.config import RunConfig, resolved
from common.errors import FedSiloError
from common.files import append_jsonl, atomic_write_bytes, atomic_write_json, atomic_write_text, make_private


# A run writes the final model (about 90 MB for the default MiniLM), round weights, logs and the
# SuperLink's database. With less free space it would fail half-way, so it is refused up front.
MIN_FREE_BYTES = 128 * 2**20


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        created: list[Path] = []  # folders made here, removed again if the run directory is unusable
        try:
            _check_file_system(self.path)
            for sub in ("", "rounds", "reports"):
                target = self.path / sub
                created += reversed([p for p in (target, *target.parents) if not p.exists()])
                target.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=self.path).close()  # writable, not only creatable
        except OSError as err:
            for folder in reversed(created):
                try:
                    folder.rmdir()
                except OSError:
                    pass
            raise FedSiloError(f"cannot create run directory {self.path}: {err.strerror}") from None

    def make_private(self) -> None:
        """Only this user may enter the run directory (state, logs, database, keys); what an
        earlier run left in it loses its group and other permissions too."""
        earlier_run = any((self.path / name).exists() for name in ("config.json", "state.json", COMMAND_FILE))
        try:
            make_private(self.path, recursive=earlier_run)
        except OSError as err:
            raise FedSiloError(f"cannot make the run directory {self.path} private: {err.strerror}") from None

    def require_written_here(self) -> None:
        """What an earlier run left (checkpoint, SuperLink database) is used only if this
        coordinator wrote the folder (a signed command.json): a SuperLink database from elsewhere
        may hold a pending run, which the SuperLink would start, app bundle and all."""
        found = [name for name in EARLIER_STATE if os.path.lexists(self.path / name)]
        if not found:
            return
        if not os.path.lexists(self.path / COMMAND_FILE):
            raise FedSiloError(f"{self.path / found[0]} was not written by this coordinator (no signed "
                               f"{COMMAND_FILE} beside it); use a new --run-dir")
        read_run_options(self.path, tool=None)

    @property
    def final_model(self) -> Path:
        return self.path / "final-model"

    def write_start(self, cfg: RunConfig) -> None:
        atomic_write_json(self.path / "config.json", resolved(cfg))
        atomic_write_json(self.path / "labels.json", dict(enumerate(cfg.labels)))

    def save_round_weights(self, server_round: int, weights: list[np.ndarray], kind: str = "round") -> None:
        buf = io.BytesIO()
        np.savez(buf, *weights)
        atomic_write_bytes(self.path / "rounds" / f"{kind}-{server_round:04d}.npz", buf.getvalue())

    def load_round_weights(self, server_round: int, kind: str = "round") -> list[np.ndarray]:
        path = self.path / "rounds" / f"{kind}-{server_round:04d}.npz"
        try:
            with np.load(path, allow_pickle=False) as npz:
                return [npz[f"arr_{i}"] for i in range(len(npz.files))]
        except (OSError, ValueError, KeyError) as err:
            raise FedSiloError(f"cannot resume: {path} is missing or damaged ({err})") from None

    # ------------------------------------------------------------ checkpoint / resume
    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    @property
    def enrolment_path(self) -> Path:
        """node id -> enrolled site name, written by fl-server when it registers the site keys."""
        return self.path / "sites.json"

    def enrolled_sites(self) -> dict[str, str] | None:
        """The enrolment map, or None where nobody enrolled sites (simulation, --insecure)."""
        if not self.enrolment_path.exists():
            return None
        try:
            names = json.loads(self.enrolment_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise FedSiloError(f"{self.enrolment_path} is unreadable ({err})") from None
        if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
            raise FedSiloError(f"{self.enrolment_path} is not a map of node ids to site names")
        return {str(k): v for k, v in names.items()}

    def save_state(self, state: dict) -> None:
        """The strategy's state after a closed round; written atomically, so a kill leaves the
        previous checkpoint or this one, never half of one."""
        atomic_write_json(self.state_path, state)

    def load_state(self) -> dict | None:
        if not self.state_path.exists():
            return None
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            int(state["last_round"]), dict(state["config"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise FedSiloError(f"cannot resume: {self.state_path} is damaged ({err})") from None
        return state

    def resume_point(self, cfg: RunConfig) -> dict | None:
        """The checkpoint of an earlier, unfinished run of this configuration in this directory
        (None for a new run); a different configuration or a finished run is refused."""
        state = self.load_state()
        if state is None:
            return None
        saved, wanted = state["config"], cfg.to_flat()
        # Operational settings may change on resume; anything that shapes training may not (the
        # sites calibrated their DP noise for the planned rounds, for instance).
        changed = sorted(k for k in set(saved) | set(wanted)
                         if k not in RESUMABLE_CHANGES and saved.get(k) != wanted.get(k))
        if changed:
            shown = ", ".join(f"{k}: {saved.get(k)!r} -> {wanted.get(k)!r}" for k in changed[:3])
            raise FedSiloError(f"{self.path} holds a run with other options ({shown}); use a new "
                               f"--run-dir, or continue it with: fl-server resume {self.path}")
        summary = self.path / "summary.json"
        if state["last_round"] >= cfg.rounds and summary.exists():
            raise FedSiloError(f"{self.path} holds a finished run ({state['last_round']} of {cfg.rounds} "
                               "rounds); use a new --run-dir")
        return state

    def trim_metrics(self, last_round: int) -> None:
        """Drop round lines written after the checkpoint (a kill between the two writes): the
        resumed run writes those rounds again."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return
        kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and _round_of(line) <= last_round]
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))

    def save_round_report(self, server_round: int, total: np.ndarray, per_site: dict[str, np.ndarray],
                          labels: tuple[str, ...], record: dict) -> None:
        # Imported here: scikit-learn takes seconds to import, and fl-server / fl-sim should refuse
        # bad input without that wait (only the ServerApp writes reports).
        from server.entity_round import entity_lines
        from server.fairness_round import fairness_lines
        from server.report import report_dict, report_text

        report = {
            "round": server_round,
            "federation": {"confusion": total.tolist(), "report": report_dict(total, labels)},
            "sites": {name: {"confusion": c.tolist(), "report": report_dict(c, labels)}
                      for name, c in sorted(per_site.items())},
            **({"fairness": record["fairness"]} if record.get("fairness") else {}),
            **({"entities": record["entities"]} if record.get("entities") else {}),
        }
        atomic_write_json(self.path / "reports" / f"round-{server_round:04d}.json", report)
        words = " (NER: word-level, each word's tag)" if record.get("entities") else ""
        text = [f"Classification report after round {server_round}{words}", "", *entity_lines(record.get("entities")),
                "== federation (all sites' eval splits) ==", report_text(total, labels)]
        for name, c in sorted(per_site.items()):
            text += [f"== site {name} ==", report_text(c, labels)]
        text += fairness_lines(record.get("fairness"), labels)
        atomic_write_text(self.path / "report.txt", "\n".join(text))
        append_jsonl(self.path / "metrics.jsonl", record)

    def append_report_section(self, title: str, lines: list[str]) -> None:
        report = self.path / "report.txt"
        before = report.read_text(encoding="utf-8") if report.exists() else ""
        body = "\n".join(lines) if lines else "(no site trained)"
        atomic_write_text(report, f"{before}\n== {title} ==\n{body}\n")

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.path / "summary.json", summary)


# ------------------------------------------------------------ the options of an fl-server run
COMMAND_FILE = "command.json"


def coordinator_key() -> tuple[bytes, Path]:
    """This user's coordinator key: 32 random bytes in $XDG_CONFIG_HOME/fedsilo/coordinator.key
    (mode 0600), made on first use. It signs (HMAC-SHA256) what fl-server keeps in a run
    directory and reads back later: a run directory written by anyone else does not verify."""
    folder = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "fedsilo"
    path = folder / "coordinator.key"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not os.path.lexists(path):
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".coordinator.key.")  # 0600
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(secrets.token_bytes(32))
                    fh.flush()
                    os.fsync(fh.fileno())
                try:
                    os.link(tmp, path)  # never replaces a key another fl-server made meanwhile
                except FileExistsError:
                    pass
            finally:
                os.unlink(tmp)
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as fh:
            st, key = os.fstat(fh.fileno()), fh.read(64)
    except OSError as err:
        raise FedSiloError(f"cannot use the coordinator key {path}: {err.strerror or err}") from None
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise FedSiloError(f"the coordinator key {path} must be yours and readable by you alone (chmod 600)")
    if len(key) != 32:
        raise FedSiloError(f"the coordinator key {path} is damaged (not 32 bytes)")
    return key, path


def _mac(key: bytes, tool, run_dir, options) -> bytes:
    body = json.dumps({"tool": tool, "run_dir": run_dir, "options": options}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, b"fedsilo command.json 1\0" + body.encode("utf-8"), hashlib.sha256).hexdigest().encode()


def write_run_options(run_dir: Path, options: dict, tool: str = "fl-server") -> None:
    """RUN_DIR/command.json: the run's options (no argv, no working directory), signed."""
    key, _ = coordinator_key()
    atomic_write_json(run_dir / COMMAND_FILE, {"tool": tool, "run_dir": str(run_dir), "options": options,
                                               "mac": _mac(key, tool, str(run_dir), options).decode()})


def read_run_options(run_dir: Path, tool: str | None = "fl-server") -> dict:
    """The options `write_run_options` signed for `run_dir` (and `tool`, unless None); refused
    unless this coordinator signed them, for this very folder."""
    path = run_dir / COMMAND_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FedSiloError(f"{run_dir} is not the run directory of an fl-server run (no {COMMAND_FILE})") from None
    except (OSError, UnicodeDecodeError, ValueError):
        saved = None
    key, key_path = coordinator_key()
    if not (isinstance(saved, dict) and set(saved) == {"tool", "run_dir", "options", "mac"}
            and isinstance(saved["mac"], str) and isinstance(saved["options"], dict)
            and hmac.compare_digest(saved["mac"].encode("utf-8", "replace"),
                                    _mac(key, saved["tool"], saved["run_dir"], saved["options"]))):
        raise FedSiloError(f"{path} was not written by this coordinator (its signature does not verify "
                           f"with {key_path}); start the run again with its options in a new run directory")
    if saved["run_dir"] != str(run_dir):
        raise FedSiloError(f"{path} was written for the run directory {saved['run_dir']}; a run directory "
                           "cannot be resumed from another place")
    if tool is not None and saved["tool"] != tool:
        raise FedSiloError(f"{run_dir} holds an {saved['tool']} run; continue it with {saved['tool']} and its options")
    return saved["options"]


# What a run directory keeps from one start to the next.
EARLIER_STATE = ("state.json", "sites.json", "superlink.db", "superlink.db-wal", "superlink.db-shm")

# Options that may differ when a run is resumed.
RESUMABLE_CHANGES = ("round-timeout", "max-fairness-gap")


def _round_of(line: str) -> int:
    try:
        return int(json.loads(line)["round"])
    except (ValueError, KeyError, TypeError):
        return 1 << 30  # a torn last line: dropped


def _check_file_system(path: Path) -> None:
    """Refuse a read-only or (nearly) full file system before anything is written to it."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    fs = os.statvfs(existing)
    if fs.f_flag & os.ST_RDONLY:
        raise FedSiloError(f"cannot create run directory {path}: {existing} is on a read-only file system")
    free = fs.f_bavail * fs.f_frsize
    if free < MIN_FREE_BYTES:
        raise FedSiloError(f"cannot create run directory {path}: no space left on device ({free // 1024} KiB "
                           f"free, a run needs at least {MIN_FREE_BYTES // 2**20} MiB)")
