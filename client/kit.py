"""The site kit the coordinator hands to a site (written by server/federation.py)."""

from __future__ import annotations

import json
from pathlib import Path

from common.errors import FedSiloError
from common.pki import check_certificate, check_node_key


def load_kit(kit: str | Path) -> dict:
    """A site kit as fl-client uses it; every missing or broken piece is one clear error."""
    kit = Path(kit).resolve()
    try:
        meta = json.loads((kit / "kit.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FedSiloError(f"{kit} is not a site kit (kit.json missing)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise FedSiloError(f"{kit}/kit.json is unreadable ({err})") from None
    check_certificate(kit / "ca.pem", "CA certificate")
    check_node_key(kit / "site.key")
    return {"site": meta["site"], "server": meta["server"], "ca": kit / "ca.pem", "key": kit / "site.key"}
