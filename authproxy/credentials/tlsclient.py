"""TLS as a client: whom every outbound connection trusts, and the certificate it presents.

One rule for every plane (upstreams, token endpoints, Bitwarden, ``login``):
the platform's roots (read from its bundle, not through ``SSL_CERT_FILE``,
which ``authproxy env`` points at the proxy's own CA) plus the top-level
``extra_ca_file`` (a corporate inspection CA); or, for a route with
``ca_file``, that file alone (pinning); or nothing verified (``verify:
false``). A client certificate (RFC 8446 §4.4.2; RFC 8705 for token
endpoints) is added to whichever of these applies.

A context with a client certificate is rebuilt when its files change on disk
(``Reloading``), so a rotated certificate is presented by new connections
without a restart.
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from authproxy.disk.ca import system_roots
from authproxy.schema.files import readable_file
from authproxy.schema.yamlreader import Section
from authproxy.secrecy.secrets import Secret

log = logging.getLogger("authproxy.tls")

# Every plane speaks HTTP/1.1 to what it dials.
_ALPN = ["http/1.1"]


@dataclass(frozen=True, slots=True)
class ClientCert:
    """A certificate and its key (PEM files), presented when the server asks (RFC 8446 §4.4.2)."""

    cert: Path
    key: Path
    password: Secret | None = None  # for an encrypted key (PKCS8 or traditional PEM)


@dataclass(frozen=True, slots=True)
class Trust:
    """What a connection's server certificate is verified against."""

    extra_ca: Path | None = None  # the top-level `extra_ca_file`, added to the system roots
    ca_file: Path | None = None  # a route's `ca_file`: the only trust for it
    verify: bool = True

    def describe(self) -> str:
        """How ``check`` and the status page name the trust store."""
        if not self.verify:
            return "verify off"
        if self.ca_file is not None:
            return f"route ca_file {self.ca_file}"
        if self.extra_ca is not None:
            return f"system+extra {self.extra_ca}"
        return "system"


class ClientCertError(Exception):
    """A client certificate or key that cannot be used; the message is one sentence, no secret in it."""


def client_context(trust: Trust, cert: ClientCert | None = None) -> ssl.SSLContext:
    """The client SSLContext for ``trust`` presenting ``cert``: the one rule every plane uses.

    Raises ``ClientCertError`` when ``cert`` cannot be loaded, ``OSError``
    when a CA file cannot be read.
    """
    if trust.ca_file is not None:
        ctx = ssl.create_default_context(cafile=str(trust.ca_file))
    else:
        roots = system_roots()
        ctx = ssl.create_default_context(cafile=str(roots) if roots else None)
        if trust.extra_ca is not None:
            ctx.load_verify_locations(cafile=str(trust.extra_ca))
    if not trust.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(_ALPN)
    if cert is not None:
        load_client_cert(ctx, cert)
    return ctx


def load_client_cert(ctx: ssl.SSLContext, cert: ClientCert) -> None:
    """Load ``cert`` into ``ctx``, or raise ``ClientCertError`` saying in one sentence what is wrong."""
    given = cert.password is not None and not cert.password.missing

    def password() -> bytes:
        # Always a callable: with none, OpenSSL would prompt on the terminal for an encrypted key.
        if not given or cert.password is None:
            raise ClientCertError(f"the key {cert.key} is encrypted; set `client_key_password`")
        return cert.password.reveal().encode()

    try:
        ctx.load_cert_chain(str(cert.cert), str(cert.key), password=password)
    except ClientCertError:
        raise
    except ssl.SSLError as exc:
        raise ClientCertError(_ssl_reason(exc, cert, given)) from None
    except OSError as exc:
        which = cert.cert if not os.access(cert.cert, os.R_OK) else cert.key
        raise ClientCertError(f"{which} cannot be read ({exc.strerror or type(exc).__name__})") from None


def _ssl_reason(exc: ssl.SSLError, cert: ClientCert, password_given: bool) -> str:
    """OpenSSL says "PEM lib" for most of what goes wrong; cryptography tells the cases apart."""
    if "KEY_VALUES_MISMATCH" in str(exc.reason or ""):
        return f"the key {cert.key} does not match the certificate {cert.cert}"
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        x509.load_pem_x509_certificate(cert.cert.read_bytes())
    except ValueError:
        return f"{cert.cert} is not a PEM certificate"
    try:
        pw = cert.password.reveal().encode() if password_given and cert.password is not None else None
        serialization.load_pem_private_key(cert.key.read_bytes(), pw)
    except TypeError:
        # cryptography: a password given for a key that is not encrypted (the other case is caught above).
        return f"the key {cert.key} is not encrypted; remove `client_key_password`"
    except ValueError:
        if password_given:
            return f"the key {cert.key} cannot be decrypted with `client_key_password` (or is not a PEM key)"
        return f"{cert.key} is not a PEM private key"
    return f"{cert.cert} and {cert.key} cannot be used together ({exc.reason or 'PEM lib'})"


def describe_cert(cert: ClientCert) -> str:
    """The certificate's subject and expiry, for ``check`` and the status page (never the key)."""
    from cryptography import x509

    try:
        leaf = x509.load_pem_x509_certificate(cert.cert.read_bytes())
    except (OSError, ValueError):
        return f"{cert.cert} (unreadable)"
    until = leaf.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    expired = " EXPIRED" if leaf.not_valid_after_utc < datetime.datetime.now(datetime.UTC) else ""
    return f"{leaf.subject.rfc4514_string()} until {until}{expired}"


# --------------------------------------------------------------------------- the route and auth keys


def parse_client_cert(sec: Section) -> ClientCert | None:
    """``client_cert``, ``client_key`` and ``client_key_password`` of a route or an ``auth:`` block.

    The pair is loaded now, so that ``check`` says in one sentence what is
    wrong with it (a key that does not match, a wrong password, a file that
    is not PEM) rather than the first request finding out.
    """
    cert = readable_file(sec, "client_cert")
    key = readable_file(sec, "client_key")
    password = sec.secret("client_key_password")
    if sec.has("client_cert") != sec.has("client_key"):
        sec.error("client_key" if sec.has("client_cert") else "client_cert", "give both `client_cert` and `client_key`")
        return None
    if password is not None and not sec.has("client_key"):
        sec.error("client_key_password", "is the password of `client_key`, which is not given")
    if cert is None or key is None:
        return None
    out = ClientCert(cert, key, password)
    if password is not None and password.missing:
        return out  # the route answers 502 naming the variable; nothing to try yet
    try:
        load_client_cert(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), out)
    except ClientCertError as exc:
        sec.error("client_key", str(exc))
        return None
    if "EXPIRED" in describe_cert(out):
        sec.warn("client_cert", f"the certificate in {cert} has expired; servers will refuse it")
    return out


# --------------------------------------------------------------------------- rotation


def _signature(cert: ClientCert) -> tuple[int, ...] | None:
    """What changes when a file is replaced or rewritten: inode, size, mtime of both files."""
    try:
        a, b = os.stat(cert.cert), os.stat(cert.key)
    except OSError:
        return None
    return (a.st_ino, a.st_size, a.st_mtime_ns, b.st_ino, b.st_size, b.st_mtime_ns)


class Reloading:
    """A context presenting ``cert``, rebuilt when the certificate or key file changes on disk.

    ``current`` stats the two files (two system calls) and returns the
    context for what is there now. A pair that fails to load (a certificate
    rotated before its key, a file half written) keeps the last good context
    and logs once per change; with no good context yet it raises.
    """

    def __init__(self, trust: Trust, cert: ClientCert, what: str) -> None:
        self._trust = trust
        self._cert = cert
        self._what = what  # "route billing", for the log
        self._sig: tuple[int, ...] | None = None
        self._ctx: ssl.SSLContext | None = None
        self._failed: tuple[int, ...] | None = None
        self._error = ""

    def current(self) -> ssl.SSLContext:
        sig = _signature(self._cert)  # None: a file is missing (mid-rotation) or unreadable
        if self._ctx is not None and sig == self._sig:
            return self._ctx
        if sig == self._failed and self._error:
            return self._last_good()  # reported already
        try:
            ctx = client_context(self._trust, self._cert)
        except (ClientCertError, OSError) as exc:
            self._failed = sig
            self._error = str(exc) if isinstance(exc, ClientCertError) else f"{exc.strerror or exc}"
            if self._ctx is not None:
                log.warning(
                    "%s: the changed client certificate cannot be used, the last one is: %s", self._what, self._error
                )
            return self._last_good()
        if self._ctx is not None:
            log.info("%s: client certificate reloaded (%s)", self._what, describe_cert(self._cert))
        self._ctx, self._sig, self._failed, self._error = ctx, sig, None, ""
        return ctx

    def _last_good(self) -> ssl.SSLContext:
        if self._ctx is None:
            raise ClientCertError(self._error)
        return self._ctx


class Contexts:
    """Client contexts by (trust, client certificate), for one running proxy.

    A context without a client certificate is built once (building one reads
    the CA bundle from disk); one with a certificate is a ``Reloading``.
    """

    def __init__(self, extra_ca: Path | None) -> None:
        self.extra_ca = extra_ca
        self._plain: dict[Trust, ssl.SSLContext] = {}
        self._reloading: dict[tuple[Trust, ClientCert], Reloading] = {}

    def trust(self, ca_file: Path | None = None, verify: bool = True) -> Trust:
        return Trust(self.extra_ca, ca_file, verify)

    def get(self, trust: Trust, cert: ClientCert | None = None, what: str = "") -> ssl.SSLContext:
        """Raises ``ClientCertError`` when ``cert`` has never loaded."""
        if cert is None:
            ctx = self._plain.get(trust)
            if ctx is None:
                ctx = self._plain[trust] = client_context(trust)
            return ctx
        rel = self._reloading.get((trust, cert))
        if rel is None:
            rel = self._reloading[(trust, cert)] = Reloading(trust, cert, what)
        return rel.current()


# For a caller given no contexts of its own: the system roots alone.
SYSTEM = Contexts(None)


def tls_view(trust: Trust, cert: ClientCert | None, token_cert: ClientCert | None = None) -> dict[str, str | None]:
    """What ``check`` and the status page say of a route's TLS: its trust store, the certificates it presents."""
    return {
        "trust": trust.describe(),
        "client_cert": describe_cert(cert) if cert is not None else None,
        "token_client_cert": describe_cert(token_cert) if token_cert is not None else None,
    }
