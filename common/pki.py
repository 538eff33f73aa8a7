"""The federation's keys and certificates, made with the `cryptography` package.

A federation has its own certificate authority (CA). The coordinator's TLS certificate is
signed by it for the host names and addresses sites connect to; sites trust only that CA.
Each site gets a NIST P-256 key pair in OpenSSH format (what Flower's node authentication
expects); the coordinator registers the public key with the SuperLink, and a node that
presents any other key is refused.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.errors import FedSiloError
from common.files import atomic_write_bytes

VALID_DAYS = 365  # the server certificate: `fl-server renew` issues a new one under the same CA
CA_VALID_DAYS = 3650  # the CA every site trusts; renewing it means a new ca.pem in every kit


def _write_private(path: Path, data: bytes, new: bool = False) -> None:
    """Mode 0600, written beside and renamed over `path` (a symbolic link planted there is
    replaced, never written through); `new`: refuse to replace an existing file."""
    if new and os.path.lexists(path):
        raise FedSiloError(f"{path} already exists; refusing to overwrite a key")
    atomic_write_bytes(path, data)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(directory: Path, name: str = "FedSilo federation CA") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    _write_private(key_path, _pem_key(key), new=True)
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), new=True)
    return cert_path, key_path


def make_server_cert(directory: Path, ca_cert: Path, ca_key: Path, hosts: list[str],
                     days: int = VALID_DAYS, keep_key: bool = False) -> tuple[Path, Path]:
    """A TLS server certificate for every host name / IP address in `hosts` (subject alt names),
    valid for `days` but never beyond the CA. `keep_key`: sign the key already in server.key
    (renewal: the pair on disk never mismatches), else a new one."""
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    key_path = directory / "server.key"
    key = (serialization.load_pem_private_key(key_path.read_bytes(), password=None) if keep_key
           else ec.generate_private_key(ec.SECP256R1()))
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = dt.datetime.now(dt.timezone.utc)
    until = min(now + dt.timedelta(days=days), ca.not_valid_after_utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(until)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(signer, hashes.SHA256()))
    cert_path = directory / "server.pem"
    if not keep_key:
        _write_private(key_path, _pem_key(key))
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def expires(path: Path) -> dt.datetime:
    """When the PEM certificate at `path` stops being valid (UTC)."""
    return x509.load_pem_x509_certificate(Path(path).read_bytes()).not_valid_after_utc


def make_node_key(private_path: Path) -> Path:
    """A P-256 key pair in OpenSSH format (Flower's node authentication); returns the .pub path.
    Never replaces a key: a site's key on disk is what its kit and the SuperLink know it by."""
    pub = private_path.with_name(private_path.name + ".pub")
    if os.path.lexists(pub):
        raise FedSiloError(f"{pub} already exists; refusing to overwrite a key")
    key = ec.generate_private_key(ec.SECP256R1())
    _write_private(private_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                   serialization.NoEncryption()), new=True)
    _write_private(pub, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                      serialization.PublicFormat.OpenSSH) + b"\n")
    return pub


def check_node_key(path: Path) -> None:
    """A site's private key must be a readable OpenSSH NIST EC key; say so in one line if not."""
    try:
        key = serialization.load_ssh_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise FedSiloError(f"site key {path} not found") from None
    except (OSError, ValueError, TypeError) as err:
        raise FedSiloError(f"site key {path} is not a usable OpenSSH private key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FedSiloError(f"site key {path} must be a NIST EC (P-256/P-384) key")


def node_public_key(path: Path) -> list[bytes]:
    """The OpenSSH public line's type and key of a site's private key (its comment dropped), to
    compare with the .pub the coordinator enrolled."""
    key = serialization.load_ssh_private_key(Path(path).read_bytes(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).split()[:2]


def check_certificate(path: Path, what: str) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError:
        raise FedSiloError(f"{what} {path} not found") from None
    except (OSError, ValueError) as err:
        raise FedSiloError(f"{what} {path} is not a PEM certificate ({err})") from None
    now = dt.datetime.now(dt.timezone.utc)
    if cert.not_valid_after_utc < now:
        raise FedSiloError(f"{what} {path} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if cert.not_valid_before_utc > now:
        raise FedSiloError(f"{what} {path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d}")
    return cert


def check_issued_by(cert: x509.Certificate, ca: x509.Certificate, cert_path: Path, ca_path: Path) -> None:
    """A server certificate from another federation fails every site's TLS handshake; say so now."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise FedSiloError(f"server certificate {cert_path} is not signed by the CA certificate {ca_path} "
                           "(files from two different federations?)") from None


def check_private_key(path: Path, what: str, cert: x509.Certificate | None = None) -> None:
    """A PEM private key that loads (and, given `cert`, belongs to it); one line if not."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise FedSiloError(f"{what} {path} not found") from None
    except (OSError, ValueError, TypeError) as err:
        raise FedSiloError(f"{what} {path} is not a usable PEM private key ({err})") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert is not None and key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise FedSiloError(f"{what} {path} does not belong to the certificate beside it")
