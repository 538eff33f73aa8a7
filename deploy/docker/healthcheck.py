"""The container's health check: with FEDSILO_HEALTH_PORT set (the coordinator), the gateway must
accept a TCP connection on it; otherwise (a site) fl-client's Flower SuperNode must be running."""
import os
import socket
import sys
from pathlib import Path

port = os.environ.get("FEDSILO_HEALTH_PORT")
if port:
    try:
        socket.create_connection((os.environ.get("FEDSILO_HEALTH_HOST", "127.0.0.1"), int(port)), timeout=3).close()
    except OSError as err:
        sys.exit(f"unhealthy: nothing accepts connections on port {port} ({err})")
    sys.exit(0)
for proc in Path("/proc").iterdir():
    try:
        if proc.name.isdigit() and b"flower-supernode" in (proc / "cmdline").read_bytes():
            sys.exit(0)
    except OSError:
        continue
sys.exit("unhealthy: no Flower SuperNode runs in this container")
