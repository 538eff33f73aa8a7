"""The coordinator's federation folder: CA, server certificate, enrolled sites, site kits.

    FED/ca.pem, ca.key             the federation's certificate authority (ca.key never leaves FED)
    FED/server.pem, server.key     TLS certificate of the coordinator, for --host names/addresses
    FED/server-audit.key(.pub)     the coordinator's own signing key
    FED/federation.json            address sites connect to, enrolled sites
    FED/sites/NAME.pub             each enrolled site's public key (registered with the SuperLink)
    FED/kits/NAME/                 what the coordinator hands to site NAME: ca.pem, site.key,
                                   site.key.pub, kit.json (site name, server address), README.txt
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from common.errors import FedSiloError
from common.files import atomic_write_json, read_json_object
from common.launch import split_address
from common.pki import check_certificate, check_issued_by, check_private_key, make_ca, make_node_key, make_server_cert

META_KEYS = ("address", "hosts")  # federation.json, as init() writes it
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_site_name(name: str) -> str:
    if not SITE_NAME.match(name):
        raise FedSiloError(f"site name {name!r}: use 1-64 letters, digits, '-' or '_'")
    return name


class Federation:
    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()

    # ---------------------------------------------------------------- reading
    @property
    def meta_path(self) -> Path:
        return self.path / "federation.json"

    def meta(self) -> dict:
        # Exactly what init() writes: a hand-edited file fails here, not as a KeyError later.
        meta = read_json_object(self.meta_path, META_KEYS,
                                f"{self.path} is not a federation folder (run fl-server init first)")
        if not isinstance(meta["address"], str):
            raise FedSiloError(f"{self.meta_path}: address {meta['address']!r} is not HOST:PORT")
        try:
            split_address(meta["address"])
        except FedSiloError as err:
            raise FedSiloError(f"{self.meta_path}: {err}") from None
        return meta

    @property
    def ca(self) -> Path:
        return self.path / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.path / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.path / "server.key"

    def enrolled(self) -> dict[str, Path]:
        return {p.stem: p for p in sorted((self.path / "sites").glob("*.pub"))}

    def check(self) -> dict:
        """Everything fl-server needs to start TLS, checked up front."""
        meta = self.meta()
        ca = check_certificate(self.ca, "CA certificate")
        server = check_certificate(self.server_cert, "server certificate")
        check_issued_by(server, ca, self.server_cert, self.ca)
        # A broken key would only show as "the SuperLink exited" after the run directory exists.
        check_private_key(self.server_key, "server key", server)
        return meta

    # ---------------------------------------------------------------- writing
    def init(self, hosts: list[str], port: int) -> None:
        if self.meta_path.exists():
            raise FedSiloError(f"{self.path} already holds a federation; use another --dir")
        hosts = list(dict.fromkeys([*hosts, "127.0.0.1", "localhost"]))  # the gateway talks to it on loopback
        try:
            (self.path / "sites").mkdir(parents=True, exist_ok=True)
            (self.path / "kits").mkdir(exist_ok=True)
            ca, ca_key = make_ca(self.path)
            make_server_cert(self.path, ca, ca_key, hosts)
            make_node_key(self.path / "server-audit.key")
        except OSError as err:
            raise FedSiloError(f"cannot write the federation folder {self.path}: {err.strerror}") from None
        atomic_write_json(self.meta_path, {"address": f"{hosts[0]}:{port}", "hosts": hosts})

    def enroll(self, site: str, public_key: Path | None = None) -> Path:
        """Create (or import) the site's key pair and write its kit; returns the kit folder."""
        check_site_name(site)
        meta = self.meta()
        if site in self.enrolled():
            raise FedSiloError(f"site {site} is already enrolled in {self.path}")
        if public_key is not None:
            _check_public_key(public_key)  # before anything is written
        kit = self.path / "kits" / site
        kit.mkdir(parents=True, exist_ok=True)
        if public_key is not None:  # the site made its own key and keeps the private half
            shutil.copyfile(public_key, kit / "site.key.pub")
        else:
            make_node_key(kit / "site.key")
        shutil.copyfile(kit / "site.key.pub", self.path / "sites" / f"{site}.pub")
        shutil.copyfile(self.ca, kit / "ca.pem")
        atomic_write_json(kit / "kit.json", {"site": site, "server": meta["address"]})
        (kit / "README.txt").write_text(
            f"FedSilo site kit for site {site}. Keep site.key secret.\n"
            f"Start the site with:  fl-client --kit {kit} --data YOUR_DATA.tsv\n", encoding="utf-8")
        return kit


def _check_public_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_ssh_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as err:
        raise FedSiloError(f"{path} is not an OpenSSH public key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise FedSiloError(f"{path} must be a NIST EC (P-256/P-384) key")
