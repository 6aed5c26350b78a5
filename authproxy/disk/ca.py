"""The local CA, and leaf certificates minted with it for intercepted hosts.

Keys are EC P-256: generating one costs well under a millisecond, where RSA-2048
costs ~90 ms (warcprox saw 1.6 s in production, internetarchive/warcprox#207).
All leaves share one key, made once per process, as mitmproxy does. Leaves are
minted in a worker thread, never on the event loop, and their server
``SSLContext``s are kept in a bounded cache; concurrent CONNECTs to one host
share one mint.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cachetools import TTLCache
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from authproxy.disk.state import atomic_write, ensure_dir, locked

CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca-key.pem"
BUNDLE_NAME = "ca-bundle.pem"

_LEAF_DAYS = 30  # leaves are cheap; a short life limits a stolen one
_LEAF_CACHE_TTL = 7 * 24 * 3600.0
_BACKDATE = dt.timedelta(days=2)  # tolerate clients whose clock runs behind


class CAError(Exception):
    """The CA cannot be created or loaded; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class CAFiles:
    cert: Path
    key: Path


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


def load_ca(files: CAFiles) -> tuple[x509.Certificate, object]:
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise CAError(f"cannot read the CA certificate {files.cert}: {_why(exc)}") from None
    try:
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CAError(f"cannot read the CA key {files.key}: {_why(exc)}") from None
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise CAError(f"the CA key {files.key} does not belong to the certificate {files.cert}")
    return cert, key


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return "not a PEM certificate or unencrypted key"


def system_roots() -> Path | None:
    """The platform's CA bundle, ignoring SSL_CERT_FILE (which may point at our own bundle)."""
    paths = ssl.get_default_verify_paths()
    candidates = [
        paths.openssl_cafile,
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ]
    try:
        import certifi

        candidates.append(certifi.where())
    except ImportError:
        pass
    for c in candidates:
        if c and Path(c).is_file() and Path(c).name != BUNDLE_NAME:
            return Path(c)
    return None


class LocalCA:
    """The CA of one proxy process: files, leaf key, and the cache of server contexts."""

    def __init__(self, files: CAFiles, cache_size: int = 256) -> None:
        self.files = files
        self.cert, key = load_ca(files)
        if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            raise CAError(f"the CA key {files.key} is neither an EC nor an RSA key")
        self._key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = key
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key())  # type: ignore[arg-type]
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key_pem = self._leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._ca_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self._contexts: TTLCache[str, ssl.SSLContext] = TTLCache(cache_size, _LEAF_CACHE_TTL)
        self._minting: dict[str, asyncio.Future[ssl.SSLContext]] = {}
        self._tmp = Path(tempfile.mkdtemp(prefix="authproxy-leaf-"))  # 0700 by mkdtemp

    @property
    def cached(self) -> int:
        return len(self._contexts)

    async def context_for(self, host: str) -> ssl.SSLContext:
        """A server context presenting a leaf for ``host`` (a name or an IP literal)."""
        ctx = self._contexts.get(host)
        if ctx is not None:
            return ctx
        pending = self._minting.get(host)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[ssl.SSLContext] = asyncio.get_running_loop().create_future()
        self._minting[host] = fut
        try:
            ctx = await asyncio.to_thread(self._make_context, host)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: the caller re-raises it
            raise
        finally:
            self._minting.pop(host, None)
        fut.set_result(ctx)
        self._contexts[host] = ctx
        return ctx

    def leaf_pem(self, host: str) -> bytes:
        return self._mint(host).public_bytes(serialization.Encoding.PEM)

    def _mint(self, host: str) -> x509.Certificate:
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
            .issuer_name(self.cert.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(_serial())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(min(now + dt.timedelta(days=_LEAF_DAYS), self.cert.not_valid_after_utc))
            # RFC 5280 §4.2.1.6: with an empty subject the SAN must be critical.
            .add_extension(x509.SubjectAlternativeName([san]), critical=not subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(self._aki, critical=False)
        )
        return builder.sign(self._key, hashes.SHA256())

    def _make_context(self, host: str) -> ssl.SSLContext:
        cert = self._mint(host)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        # load_cert_chain takes paths only (python/cpython#118557): a private
        # temp file that lives for the duration of the call.
        fd, name = tempfile.mkstemp(dir=self._tmp, suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(cert.public_bytes(serialization.Encoding.PEM) + self._ca_pem + self._leaf_key_pem)
            ctx.load_cert_chain(name)
        finally:
            os.unlink(name)

        def check_sni(sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> int | None:
            # The CONNECT target chose this leaf and the upstream; a ClientHello
            # naming another host would mix the two (no SNI is fine: IPs, some tools).
            if server_name is None:
                return None
            if server_name.rstrip(".").lower().encode("idna").decode() != host:
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            return None

        ctx.sni_callback = check_sni
        return ctx

    def write_bundle(self, path: Path, extra: Path | None = None) -> Path | None:
        """System roots + ``extra`` (``extra_ca_file``) + this CA in one file, for clients that take one
        bundle. Returns the roots used.

        The extra roots go in so that a host tunnelled blind behind a corporate
        inspection proxy, whose certificates that CA signs, still verifies.
        """
        roots = system_roots()
        data = roots.read_bytes() if roots else b""
        if data and not data.endswith(b"\n"):
            data += b"\n"
        if extra is not None:
            more = extra.read_bytes()
            data += b"# extra_ca_file " + str(extra).encode() + b"\n" + more + (b"" if more.endswith(b"\n") else b"\n")
        atomic_write(path, data + b"# authproxy local CA\n" + self._ca_pem, 0o644)
        return roots

    def close(self) -> None:
        with contextlib.suppress(OSError):
            for p in self._tmp.iterdir():
                p.unlink()
            self._tmp.rmdir()


def ca_files(state_dir: Path, ca_cert: Path | None, ca_key: Path | None) -> CAFiles:
    if ca_cert is not None and ca_key is not None:
        return CAFiles(ca_cert, ca_key)
    return CAFiles(state_dir / CA_CERT_NAME, state_dir / CA_KEY_NAME)


def ensure_ca(state_dir: Path, ca_cert: Path | None, ca_key: Path | None) -> CAFiles:
    """The CA's files, made on first use when the config names none."""
    files = ca_files(state_dir, ca_cert, ca_key)
    if ca_cert is None and not (files.cert.exists() and files.key.exists()):
        try:
            create_ca(files)
        except OSError as exc:
            raise CAError(f"cannot create the CA in {state_dir}: {exc.strerror or exc}") from None
    return files
