"""The files the benchmark moves, and the TLS certificate of PB+TLS and raw TLS."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import ipaddress
import os
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class TestData:
    stream_file: Path  # text, for ``cat``
    blob_up: Path  # binary, uploaded
    blob_down: Path  # binary, downloaded (the same file when the sizes agree)
    sums: dict[Path, str]  # sha256 of each blob


def make_test_data(data: Path, sizes: dict[str, int]) -> TestData:
    """``sizes`` in MiB: ``stream``, ``upload``, ``download``."""
    data.mkdir()
    stream_file, blob = data / "stream.txt", data / "blob.bin"
    make_text(stream_file, sizes["stream"])
    make_binary(blob, max(sizes["upload"], sizes["download"]))
    blob_up = _prefix(blob, data / "blob-up.bin", sizes["upload"])
    blob_down = _prefix(blob, data / "blob-down.bin", sizes["download"])
    return TestData(stream_file, blob_up, blob_down,
                    {blob_up: sha256(blob_up), blob_down: sha256(blob_down)})


def _prefix(blob: Path, path: Path, mib: int) -> Path:
    """``blob`` itself when it has ``mib`` MiB, else a copy of its start."""
    if mib * MiB == blob.stat().st_size:
        return blob
    with open(blob, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(mib * MiB))
    return path


def make_text(path: Path, mib: int) -> None:
    """``mib`` MiB of 100-byte numbered text lines (the last one shorter)."""
    filler = "abcdefghijklmnopqrstuvwxyz0123456789" * 3
    block = "".join(f"{i:09d} {filler[:89]}\n" for i in range(MiB // 100 + 1))
    with open(path, "w") as f:
        left = mib * MiB
        while left:
            part = block[: min(left, len(block))]
            if len(part) == left:  # end with a newline, or the worker adds one
                part = part[:-1] + "\n"
            f.write(part)
            left -= len(part)


def make_binary(path: Path, mib: int) -> None:
    """``mib`` MiB of incompressible bytes (8 MiB of random data, repeated)."""
    chunk = os.urandom(8 * MiB)
    with open(path, "wb") as f:
        left = mib * MiB
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n


def sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class Cert:
    key: Path  # private key, PEM
    cert: Path  # certificate, PEM
    trust_roots: Path  # a directory holding only that certificate


def make_cert(tmp: Path) -> Cert:
    """A self-signed RSA-2048 certificate for 127.0.0.1 (as foolscap's keys
    are RSA-2048), its key, and a trust-roots directory that pins it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    cert_pem = _self_signed(key).public_bytes(serialization.Encoding.PEM)
    found = Cert(tmp / "tls.key", tmp / "tls.crt", tmp / "trust")
    found.key.write_bytes(key_pem)
    found.key.chmod(0o600)
    found.cert.write_bytes(cert_pem)
    found.trust_roots.mkdir()
    (found.trust_roots / "ca.pem").write_bytes(cert_pem)
    return found


def _self_signed(key: Any) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
