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
import base64
import contextlib
import os
import re
import ssl
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from cachetools import TTLCache

from authproxy.disk.cafiles import CAError, CAFiles
from authproxy.disk.cafiles import why as _why
from authproxy.disk.state import atomic_write

__all__ = ["CAError", "CAFiles", "LocalCA", "check_ca", "create_ca", "ensure_ca", "system_roots"]

if TYPE_CHECKING:
    from cryptography import x509

    from authproxy.disk.cakeys import CAKeys

CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca-key.pem"
BUNDLE_NAME = "ca-bundle.pem"

_LEAF_CACHE_TTL = 7 * 24 * 3600.0


def create_ca(files: CAFiles) -> None:
    """Make a new CA (cert 0644, key 0600), unless another process just did."""
    from authproxy.disk import cakeys  # cryptography: loaded only to make a CA or mint a leaf

    cakeys.create_ca(files)


def check_ca(files: CAFiles) -> tuple[bytes, bytes]:
    """The CA's certificate and key as read, checked with the ``ssl`` module; ``CAError`` as ``cakeys.load_ca`` says.

    The certificate must parse, the key must be an unencrypted EC or RSA key,
    and the two must belong together: what a proxy at start must know of its
    CA, found without importing ``cryptography`` (cakeys.py).
    """
    try:
        cert_data = files.cert.read_bytes()
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=cert_data.decode("ascii"))
    except ssl.SSLError:  # an OSError too, but one that says the content is wrong
        raise CAError(f"cannot read the CA certificate {files.cert}: {_why(ValueError())}") from None
    except (OSError, ValueError) as exc:
        raise CAError(f"cannot read the CA certificate {files.cert}: {_why(exc)}") from None
    unreadable = f"cannot read the CA key {files.key}"
    try:
        key_data = files.key.read_bytes()
    except OSError as exc:
        raise CAError(f"{unreadable}: {_why(exc)}") from None
    kind = _key_kind(key_data)
    if kind is None:
        raise CAError(f"{unreadable}: {_why(ValueError())}")
    if not kind:
        raise CAError(f"the CA key {files.key} is neither an EC nor an RSA key")

    def no_password() -> bytes:
        raise CAError(f"{unreadable}: {_why(ValueError())}")  # encrypted: OpenSSL would otherwise prompt

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(files.cert, files.key, password=no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise CAError(f"the CA key {files.key} does not belong to the certificate {files.cert}") from None
        raise CAError(f"{unreadable}: {_why(ValueError())}") from None
    except OSError as exc:
        raise CAError(f"{unreadable}: {_why(exc)}") from None
    return cert_data, key_data


# DER of the AlgorithmIdentifier OIDs a PKCS#8 key starts with (RFC 5958 §2): id-ecPublicKey
# (RFC 5480 §2.1.1) and rsaEncryption (RFC 8017 §A.1).
_EC_OID = bytes.fromhex("06072a8648ce3d0201")
_RSA_OID = bytes.fromhex("06092a864886f70d010101")


def _key_kind(key_data: bytes) -> bool | None:
    """Is the first key in this PEM text an EC or RSA key (SEC 1, PKCS#1, or PKCS#8 naming either)?

    None when there is no unencrypted private key block to look at.
    """
    m = re.search(rb"-----BEGIN (EC |RSA |)PRIVATE KEY-----([A-Za-z0-9+/=\s]*)-----END \1PRIVATE KEY-----", key_data)
    if m is None:
        return None
    if m.group(1):
        return True
    try:
        head = base64.b64decode(b"".join(m.group(2).split()), validate=True)[:32]
    except ValueError:
        return None
    return _EC_OID in head or _RSA_OID in head


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
        # Checked now, so that a bad CA stops the start; parsed with cryptography at the first mint.
        self._cert_data, self._key_data = check_ca(files)
        self._keys: CAKeys | None = None
        self._loading = threading.Lock()  # mints run in worker threads: the first ones may race to load
        self._ca_pem = ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(self._first_cert())).encode()
        self._contexts: TTLCache[str, ssl.SSLContext] = TTLCache(cache_size, _LEAF_CACHE_TTL)
        self._minting: dict[str, asyncio.Future[ssl.SSLContext]] = {}
        self._tmp = Path(tempfile.mkdtemp(prefix="authproxy-leaf-"))  # 0700 by mkdtemp

    def _first_cert(self) -> str:
        text = self._cert_data.decode("ascii")
        begin = text.index("-----BEGIN CERTIFICATE-----")
        end = text.index("-----END CERTIFICATE-----", begin) + len("-----END CERTIFICATE-----")
        return text[begin:end]

    def keys(self) -> CAKeys:
        """The CA's certificate and keys, parsed on first use (this imports cryptography)."""
        if self._keys is None:
            with self._loading:
                if self._keys is None:
                    from authproxy.disk.cakeys import CAKeys

                    self._keys = CAKeys.load(self.files, self._cert_data, self._key_data)
                    self._key_data = b""
        return self._keys

    @property
    def cert(self) -> x509.Certificate:
        return self.keys().cert

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
        from authproxy.disk.cakeys import mint_leaf, pem

        return pem(mint_leaf(self.keys(), host))

    def _make_context(self, host: str) -> ssl.SSLContext:
        from authproxy.disk.cakeys import mint_leaf, pem

        keys = self.keys()
        cert = mint_leaf(keys, host)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        # load_cert_chain takes paths only (python/cpython#118557): a private
        # temp file that lives for the duration of the call.
        fd, name = tempfile.mkstemp(dir=self._tmp, suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem(cert) + self._ca_pem + keys.leaf_key_pem)
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
