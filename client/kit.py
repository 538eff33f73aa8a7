"""The site kit the coordinator hands to a site (written by server/federation.py)."""

from __future__ import annotations

import re
from pathlib import Path

from common.errors import FedSiloError
from common.files import read_json_object
from common.launch import split_address
from common.pki import check_certificate, check_node_key

# kit.json holds exactly these keys (server/federation.py writes them); anything else means a
# hand-edited or foreign file, refused rather than silently ignored.
KIT_KEYS = ("site", "server")
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # as server/federation.py enrolls them


def load_kit(kit: str | Path) -> dict:
    """A site kit as fl-client uses it; every missing or broken piece is one clear error."""
    kit = Path(kit).resolve()
    meta = read_json_object(kit / "kit.json", KIT_KEYS, f"{kit} is not a site kit (kit.json missing)",
                            f" (a kit from fl-server enroll has {', '.join(KIT_KEYS)})")
    if not isinstance(meta["site"], str) or not SITE_NAME.match(meta["site"]):
        raise FedSiloError(f"{kit}/kit.json: site {meta['site']!r} is not a valid site name")
    if not isinstance(meta["server"], str):
        raise FedSiloError(f"{kit}/kit.json: server {meta['server']!r} is not a HOST:PORT address")
    try:
        split_address(meta["server"])
    except FedSiloError as err:
        raise FedSiloError(f"{kit}/kit.json: {err}") from None
    check_certificate(kit / "ca.pem", "CA certificate")
    check_node_key(kit / "site.key")
    return {"site": meta["site"], "server": meta["server"], "ca": kit / "ca.pem", "key": kit / "site.key"}
