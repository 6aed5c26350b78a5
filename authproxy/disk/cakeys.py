"""The local CA's keys and certificates, made and read with ``cryptography``.

Apart from ``ca.py`` so that a proxy at rest does not load ``cryptography``
(some 8 MiB of RSS, most of it its compiled core): ``ca.py`` checks the CA's
files at start with the ``ssl`` module and imports this module when the first
leaf is minted (in a worker thread), or when it must make a new CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from authproxy.disk.cafiles import CAError, CAFiles
from authproxy.disk.cafiles import why as _why
from authproxy.disk.state import atomic_write, ensure_dir, locked

_LEAF_DAYS = 30  # leaves are cheap; a short life limits a stolen one
_BACKDATE = dt.timedelta(days=2)  # tolerate clients whose clock runs behind


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _serial() -> int:
    return x509.random_serial_number()


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """ECDSA keys sign; a CA's also signs certificates and CRLs (RFC 5280 §4.2.1.3)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def create_ca(files: CAFiles) -> None:
    """Make a new CA (cert 0644, key 0600), unless another process just did."""
    ensure_dir(files.cert.parent)
    with locked(files.cert.parent, "ca-lock"):
        if files.cert.exists() and files.key.exists():
            return
        key = ec.generate_private_key(ec.SECP256R1())
        host = socket.gethostname()[:40] or "localhost"
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "authproxy"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"authproxy local CA ({host})"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signs_certificates=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write(files.key, key_pem, 0o600)
        atomic_write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def load_ca(files: CAFiles, cert_data: bytes, key_data: bytes) -> tuple[x509.Certificate, object]:
    """The CA's certificate and key from the files' contents (read once, at start, by ``ca.py``)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_data)
    except ValueError as exc:
        raise CAError(f"cannot read the CA certificate {files.cert}: {_why(exc)}") from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError) as exc:
        raise CAError(f"cannot read the CA key {files.key}: {_why(exc)}") from None
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise CAError(f"the CA key {files.key} does not belong to the certificate {files.cert}")
    return cert, key


@dataclass(frozen=True, slots=True)
class CAKeys:
    """What minting needs: the CA's certificate and key, and the one key every leaf shares."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    aki: x509.AuthorityKeyIdentifier
    leaf_key: ec.EllipticCurvePrivateKey
    leaf_key_pem: bytes

    @classmethod
    def load(cls, files: CAFiles, cert_data: bytes, key_data: bytes) -> CAKeys:
        cert, key = load_ca(files, cert_data, key_data)
        if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            raise CAError(f"the CA key {files.key} is neither an EC nor an RSA key")
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(cert.public_key())  # type: ignore[arg-type]
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        leaf_pem = leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(cert, key, aki, leaf_key, leaf_pem)


def mint_leaf(keys: CAKeys, host: str) -> x509.Certificate:
    try:
        ip = ipaddress.ip_address(host)
        san: x509.GeneralName = x509.IPAddress(ip)
        subject = x509.Name([])
    except ValueError:
        san = x509.DNSName(host)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]) if len(host) <= 64 else x509.Name([])
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(keys.cert.subject)
        .public_key(keys.leaf_key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + dt.timedelta(days=_LEAF_DAYS), keys.cert.not_valid_after_utc))
        # RFC 5280 §4.2.1.6: with an empty subject the SAN must be critical.
        .add_extension(x509.SubjectAlternativeName([san]), critical=not subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(keys.aki, critical=False)
    )
    return builder.sign(keys.key, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
