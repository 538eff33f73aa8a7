"""The site kit the coordinator hands to a site (written by server/federation.py)."""

from __future__ import annotations

import re
from pathlib import Path

from common.errors import FedSiloError
from common.files import read_json_object
from common.launch import split_address
from common.pki import check_certificate, check_node_key, node_public_key

# kit.json holds exactly these keys (server/federation.py writes them); anything else means a
# hand-edited or foreign file, refused rather than silently ignored.
KIT_KEYS = ("site", "server")
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # as server/federation.py enrolls them


def load_kit(kit: str | Path, key: str | Path | None = None) -> dict:
    """A site kit as fl-client uses it, with the site's own private key (`key`; default: the kit's
    site.key, where the coordinator made it); every missing or broken piece is one clear error."""
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
    key = Path(key).expanduser().resolve() if key else kit / "site.key"
    if not key.exists() and not (kit / "site.key").exists():
        raise FedSiloError(f"{kit} holds no private key (the site made its own): start with --key YOUR_SITE.key")
    check_node_key(key)
    enrolled = kit / "site.key.pub"
    if enrolled.exists() and node_public_key(key) != enrolled.read_bytes().split()[:2]:
        raise FedSiloError(f"{key} is not the key enrolled for site {meta['site']} ({enrolled})")
    return {"site": meta["site"], "server": meta["server"], "ca": kit / "ca.pem", "key": key}
