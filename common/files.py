"""Crash-safe file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import glob
import json
import os
import stat
import tempfile
from pathlib import Path

from common.errors import FedSiloError


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file beside `path`, fsync it, rename it over `path`, fsync the folder."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # A writer killed with SIGKILL between mkstemp and the rename leaves its temporary file; the
    # next successful write of the same file removes it (each file here has a single writer).
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_jsonl(path: str | Path, obj) -> None:
    """Append one JSON line and fsync, so a finished round's record survives a crash."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(obj, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json_object(path: Path, keys: tuple[str, ...], missing_file: str, hint: str = "") -> dict:
    """A small JSON file FedSilo wrote (a kit, a federation): an object with exactly `keys`.
    Anything else, hand-edited or damaged, is one clear error here rather than a KeyError later."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FedSiloError(missing_file) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FedSiloError(f"{path} is unreadable ({err})") from None
    if not isinstance(meta, dict):
        raise FedSiloError(f"{path} must be a JSON object with the keys {', '.join(keys)}")
    missing = [k for k in keys if k not in meta]
    unknown = sorted(set(meta) - set(keys))
    if missing or unknown:
        problem = "; ".join(filter(None, [missing and f"missing key(s) {', '.join(missing)}",
                                          unknown and f"unknown key(s) {', '.join(unknown)}"]))
        raise FedSiloError(f"{path}: {problem}{hint}")
    return meta


def make_private(root: str | Path, recursive: bool = True) -> None:
    """Take every group and other permission off `root` and (`recursive`) what lies below it, as
    an older FedSilo or a looser umask left it: the coordinator's state, logs and keys are its own.
    Symbolic links are neither followed nor changed; what belongs to another user is refused."""
    uid = os.geteuid()

    def own(path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:  # a temporary file renamed meanwhile
            return
        if stat.S_ISLNK(st.st_mode):
            return
        if st.st_uid != uid:
            raise FedSiloError(f"{path} belongs to another user; FedSilo uses only what it wrote itself")
        if st.st_mode & 0o077:
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)

    own(str(root))
    if not recursive:
        return
    for folder, dirs, files in os.walk(root):  # never into a linked folder
        for name in (*dirs, *files):
            own(os.path.join(folder, name))
