"""Counts what redaction will replace in a site's data, in a child process of fl-client.

fl-client only supervises: the name tagger loads a model, and a process holding torch's thread
pools and a model forks slowly (a signal landing inside a fork's handlers is lost). A plain
subprocess, not multiprocessing: its resource tracker ignores SIGTERM and outlives a stopped site.
Input and output are pickles on stdin and stdout between fl-client and its own child.
"""
from __future__ import annotations

import pickle
import subprocess
import sys
from collections import Counter

from common.errors import FedSiloError


def count_in_child(records, privacy, task: str = "classify") -> Counter:
    if not privacy.redact:
        return Counter()
    proc = subprocess.run([sys.executable, "-P", "-m", "client.redaction_count"],
                          input=pickle.dumps((records, privacy, task)), capture_output=True)
    try:
        status, value = pickle.loads(proc.stdout)
    except Exception:  # the child died before it could answer
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise FedSiloError(f"counting what redaction replaces failed (exit code {proc.returncode}): {tail[0]}") from None
    if status == "error":
        raise FedSiloError(value)
    return value


def main() -> None:
    from client.site import redact

    records, privacy, task = pickle.loads(sys.stdin.buffer.read())
    try:
        answer = ("ok", redact(records, privacy, task)[1])
    except FedSiloError as exc:
        answer = ("error", str(exc))
    sys.stdout.buffer.write(pickle.dumps(answer))


if __name__ == "__main__":
    main()
