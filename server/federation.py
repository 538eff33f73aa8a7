"""The coordinator's federation folder: CA, server certificate, enrolled sites, site kits.

    FED/ca.pem, ca.key             the federation's certificate authority (ca.key never leaves FED)
    FED/server.pem, server.key     TLS certificate of the coordinator, for --host names/addresses
    FED/server-audit.key(.pub)     the coordinator's own signing key
    FED/federation.json            address sites connect to, enrolled sites
    FED/sites/NAME.pub             each enrolled site's public key (registered with the SuperLink)
    FED/kits/NAME/                 what the coordinator hands to site NAME: ca.pem, site.key,
                                   site.key.pub, kit.json (site name, server address), README.txt

Everything in FED is the coordinator's alone (folders 0700, files 0600). The CA is valid for ten
years, the server certificate for one; `fl-server renew` issues a new one under the same CA, so
every site's kit stays valid.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path

from common.errors import FedSiloError
from common.files import atomic_write_bytes, atomic_write_json, atomic_write_text, make_private, read_json_object
from common.launch import split_address
from common.pki import (VALID_DAYS, check_certificate, check_issued_by, check_private_key, expires, make_ca,
                        make_node_key, make_server_cert)

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
        if not (isinstance(meta["hosts"], list) and meta["hosts"] and all(isinstance(h, str) for h in meta["hosts"])):
            raise FedSiloError(f"{self.meta_path}: hosts {meta['hosts']!r} is not a list of host names")
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
        try:
            server = check_certificate(self.server_cert, "server certificate")
        except FedSiloError as err:
            if "expired" not in str(err):
                raise
            raise FedSiloError(f"{err}; renew it with: fl-server renew --dir {self.path}") from None
        check_issued_by(server, ca, self.server_cert, self.ca)
        # A broken key would only show as "the SuperLink exited" after the run directory exists.
        check_private_key(self.server_key, "server key", server)
        return meta

    def expiry_warnings(self, within_days: int = 30) -> list[str]:
        """A line for the server certificate and for the CA if it expires within `within_days`."""
        now, lines = dt.datetime.now(dt.timezone.utc), []
        for path, what, fix in ((self.server_cert, "server certificate", f"fl-server renew --dir {self.path}"),
                                (self.ca, "CA certificate", "a new federation (fl-server init) and new kits")):
            until = expires(path)
            if until - now < dt.timedelta(days=within_days):
                lines.append(f"the {what} {path} expires on {until:%Y-%m-%d} (in {(until - now).days} days); "
                             f"renew it: {fix}")
        return lines

    def make_private(self) -> None:
        try:
            make_private(self.path)
        except OSError as err:
            raise FedSiloError(f"cannot make the federation folder {self.path} private: {err.strerror}") from None

    # ---------------------------------------------------------------- writing
    def init(self, hosts: list[str], port: int) -> None:
        if self.meta_path.exists():
            raise FedSiloError(f"{self.path} already holds a federation; use another --dir")
        hosts = list(dict.fromkeys([*hosts, "127.0.0.1", "localhost"]))  # the gateway talks to it on loopback
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.path.chmod(0o700)  # the keys below are the coordinator's alone
            for sub in ("sites", "kits"):
                (self.path / sub).mkdir(mode=0o700, exist_ok=True)
            ca, ca_key = make_ca(self.path)
            make_server_cert(self.path, ca, ca_key, hosts)
            make_node_key(self.path / "server-audit.key")
        except OSError as err:
            raise FedSiloError(f"cannot write the federation folder {self.path}: {err.strerror}") from None
        atomic_write_json(self.meta_path, {"address": f"{hosts[0]}:{port}", "hosts": hosts})

    def enroll(self, site: str, public_key: Path | None = None, replace: bool = False,
               generate: bool = False) -> Path:
        """Import the site's public key (or, with `generate`, make its key pair here) and write its
        kit; returns the kit folder. An enrolled site, or a kit folder already there, is refused
        unless `replace` (the site's old key is then forgotten: its kit stops working).

        The site makes its own key by default: a coordinator that held a site's private key could
        connect as that site. `generate` is for trying FedSilo on one machine."""
        check_site_name(site)
        meta = self.meta()
        kit, pub = self.path / "kits" / site, self.path / "sites" / f"{site}.pub"
        if not replace and (pub.exists() or pub.is_symlink()):
            raise FedSiloError(f"site {site} is already enrolled in {self.path}; "
                               "re-enrol it (a new key, a new kit) with --replace")
        if not replace and (kit.exists() or kit.is_symlink()):
            raise FedSiloError(f"{kit} already exists; refusing to overwrite a site's kit and key "
                               "(re-enrol the site with --replace)")
        if public_key is None and not generate:
            raise FedSiloError(f"give site {site}'s public key with --public-key: the site makes its key pair "
                               "with `fl-client --make-key FILE` and sends FILE.pub (or --generate-site-key makes "
                               "it here, and this coordinator then holds the site's private key)")
        if public_key is not None:
            _check_public_key(public_key)  # before anything is written
        self.make_private()
        if replace:
            if kit.is_dir() and not kit.is_symlink():
                shutil.rmtree(kit)
            else:
                kit.unlink(missing_ok=True)
            pub.unlink(missing_ok=True)
        kit.mkdir(mode=0o700)
        if public_key is not None:  # the site made its own key and keeps the private half
            atomic_write_bytes(kit / "site.key.pub", Path(public_key).read_bytes())
        else:
            make_node_key(kit / "site.key")
        atomic_write_bytes(pub, (kit / "site.key.pub").read_bytes())
        atomic_write_bytes(kit / "ca.pem", self.ca.read_bytes())
        atomic_write_json(kit / "kit.json", {"site": site, "server": meta["address"]})
        atomic_write_text(kit / "README.txt",
                          f"FedSilo site kit for site {site}.\n" + (
                              f"Start the site with:  fl-client --kit {kit} --key YOUR_SITE.key --data YOUR_DATA.tsv\n"
                              if public_key is not None else
                              "Keep site.key secret (it was made by the coordinator: --generate-site-key).\n"
                              f"Start the site with:  fl-client --kit {kit} --data YOUR_DATA.tsv\n"))
        return kit

    def renew(self, days: int = VALID_DAYS) -> dt.datetime:
        """A new server certificate for the same hosts, signed by the same CA (the sites' kits
        stay valid), for the same server key; returns when it expires (never after the CA)."""
        meta = self.meta()
        ca = check_certificate(self.ca, "CA certificate")
        keep = True
        try:
            check_private_key(self.server_key, "server key")
        except FedSiloError:
            keep = False  # missing or damaged: a new key
        try:
            check_private_key(self.path / "ca.key", "CA key", ca)
            self.make_private()
            make_server_cert(self.path, self.ca, self.path / "ca.key", meta["hosts"], days, keep_key=keep)
        except OSError as err:
            raise FedSiloError(f"cannot write the server certificate in {self.path}: {err.strerror}") from None
        return expires(self.server_cert)


def _check_public_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_ssh_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as err:
        raise FedSiloError(f"{path} is not an OpenSSH public key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise FedSiloError(f"{path} must be a NIST EC (P-256/P-384) key")
