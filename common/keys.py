"""The P-256 keys FedSilo signs with: make, load and name them (OpenSSH or PEM files).

Every node's audit log (common/audit.py) and a site's privacy ledger (client/ledger.py) are
signed with such a key; `key_id` names a key by its public half, never by a file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from common.errors import FedSiloError
from common.files import atomic_write_bytes, atomic_write_text

PublicKey = ec.EllipticCurvePublicKey
PrivateKey = ec.EllipticCurvePrivateKey


def generate_key(path_private: str | Path) -> Path:
    """Write a new P-256 private key (OpenSSH format, mode 0600) and PATH.pub; return PATH.pub.

    Never overwrites: replacing a node's signing key would orphan its existing logs.
    """
    path_private = Path(path_private)
    path_public = _pub_path(path_private)
    for path in (path_private, path_public):
        if path.exists():
            raise FedSiloError(f"{path}: already exists; refusing to overwrite a key")
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    try:
        atomic_write_bytes(path_private, private)  # mkstemp creates it 0600; say so anyway
        os.chmod(path_private, 0o600)
        atomic_write_text(path_public, openssh_public(key.public_key()) + "\n")
        os.chmod(path_public, 0o644)
    except OSError as err:
        raise FedSiloError(f"{path_private}: cannot write the key ({err.strerror or err})") from None
    return path_public


def _pub_path(path_private: Path) -> Path:
    return path_private.with_name(path_private.name + ".pub")  # as ssh-keygen: id_x -> id_x.pub


def load_private_key(path: str | Path) -> PrivateKey:
    """An unencrypted P-256 private key from an OpenSSH or PEM file; FedSiloError otherwise."""
    raw = _read_key_file(path)
    try:
        if raw.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            key = serialization.load_ssh_private_key(raw, password=None)
        else:
            key = serialization.load_pem_private_key(raw, password=None)
    except TypeError:  # cryptography's way of saying "needs a password"
        raise FedSiloError(f"{path}: the key is encrypted; FedSilo needs an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise FedSiloError(f"{path}: not an OpenSSH or PEM private key") from None
    return _require_p256(key, path, PrivateKey)


def load_public_key(path_or_openssh_line: str | Path) -> PublicKey:
    """A P-256 public key from an OpenSSH line ("ecdsa-sha2-nistp256 AAAA..."), or a file
    holding one (a .pub file) or a PEM public key; FedSiloError otherwise."""
    source = path_or_openssh_line
    if isinstance(source, str) and not os.path.exists(source) and _looks_like_openssh_line(source):
        return parse_openssh_public(source.strip().encode(), "public key")
    raw = _read_key_file(source)
    if b"PRIVATE KEY-----" in raw:
        raise FedSiloError(f"{source}: this is a private key; pass the public key (the .pub file)")
    if raw.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(raw)
        except (ValueError, UnsupportedAlgorithm):
            raise FedSiloError(f"{source}: not a PEM public key") from None
        return _require_p256(key, source, PublicKey)
    lines = [line for line in raw.splitlines() if line.strip()]
    if len(lines) != 1:
        raise FedSiloError(f"{source}: expected one OpenSSH public key line, found {len(lines)} lines")
    return parse_openssh_public(lines[0].strip(), source)


def _looks_like_openssh_line(text: str) -> bool:
    """"ALGORITHM BASE64 [COMMENT]" on one line, as in a .pub file or authorized_keys."""
    words = text.strip().split()
    return ("\n" not in text.strip() and len(words) >= 2
            and words[0].startswith(("ecdsa-sha2-", "ssh-", "sk-")))


def parse_openssh_public(line: bytes, where) -> PublicKey:
    try:
        key = serialization.load_ssh_public_key(line)
    except (ValueError, UnsupportedAlgorithm):
        raise FedSiloError(f"{where}: not an OpenSSH public key line") from None
    return _require_p256(key, where, PublicKey)


def _read_key_file(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise FedSiloError(f"{path}: no such key file") from None
    except OSError as err:
        raise FedSiloError(f"{path}: cannot read the key ({err.strerror or err})") from None


def _require_p256(key, where, kind):
    if not isinstance(key, kind) or not isinstance(key.curve, ec.SECP256R1):
        found = getattr(getattr(key, "curve", None), "name", None) or (
            type(key).__name__.lstrip("_").replace("PrivateKey", "").replace("PublicKey", ""))
        raise FedSiloError(f"{where}: a {found} key; the audit log needs a NIST P-256 EC key "
                           "(ecdsa-sha2-nistp256)")
    return key


def openssh_public(public_key: PublicKey) -> str:
    """The one-line OpenSSH form, "ecdsa-sha2-nistp256 AAAA..."."""
    return public_key.public_bytes(serialization.Encoding.OpenSSH,
                                   serialization.PublicFormat.OpenSSH).decode("ascii")


def key_id(public_key: PublicKey) -> str:
    """"sha256:" + hex SHA-256 of the key's DER SubjectPublicKeyInfo: names a key, never a file."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def trust(*public_keys: PublicKey) -> dict[str, PublicKey]:
    """The `trusted_keys` mapping for verify_log: key id -> key."""
    return {key_id(k): k for k in public_keys}
