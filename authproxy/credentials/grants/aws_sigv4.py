"""AWS Signature Version 4 (``type: aws_sigv4``): keys from AWS's standard credential chain, every request signed.

The keys come from botocore's credential chain, as the AWS CLI and every SDK
find them: the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SESSION_TOKEN``),
the shared ``credentials`` and ``config`` files and their profiles
(``profile``, else ``AWS_PROFILE``), IAM Identity Center (SSO) caches,
``credential_process``, assumed roles, web identity, container and instance
metadata. botocore is imported only when such a route fetches (the ``aws``
extra: ``pip install 'authproxy[aws]'``).

Keys are read again every ``default_ttl`` seconds (300), so rotated files
and renewed SSO sessions are picked up. Keys botocore knows to expire
(refreshable: assumed roles, SSO, a ``credential_process`` that prints an
``Expiration``) are renewed by botocore itself, which hands out keys with
at least ten minutes left; so that a copy cached here never outlives them,
they are read again at least every nine minutes. An upstream's "expired"
answer (``awssigner.py``) drops every cached key: the chain is read anew.

The signing itself is ``awssigner.py`` (per request) and ``sigv4.py`` (the
algorithm).
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import time
from dataclasses import dataclass, field
from typing import Any

from authproxy.credentials.awssigner import AwsSigner
from authproxy.credentials.grants.base import Credential, Grant, GrantContext, register
from authproxy.credentials.sigv4 import Keys
from authproxy.errors import CredentialUnavailable, TokenEndpointTimeout
from authproxy.schema.yamlreader import Section
from authproxy.secrecy.redact import REDACTOR

# botocore's mandatory refresh window is 10 minutes: frozen keys it hands out stay valid that long.
_REFRESHABLE_TTL = 540.0
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


class _Chain:
    """botocore's credentials object, kept between fetches while botocore can renew it."""

    def __init__(self) -> None:
        self.creds: Any = None  # botocore.credentials.Credentials
        self.region: str | None = None
        self.last: AwsSigner | None = None

    def read(self, profile: str | None) -> tuple[Keys, bool]:
        """The current keys, and whether botocore renews them itself (runs in a thread: files, processes, HTTP)."""
        from botocore.credentials import RefreshableCredentials
        from botocore.exceptions import ProfileNotFound
        from botocore.session import Session

        reuse = isinstance(self.creds, RefreshableCredentials) and not (self.last and self.last.rejected)
        try:
            if not reuse:
                session = Session(profile=profile)
                self.creds = session.get_credentials()
                region = session.get_config_variable("region")
                self.region = region if isinstance(region, str) and region else None
            creds = self.creds
            frozen = creds.get_frozen_credentials() if creds is not None else None
        except ProfileNotFound:
            self.creds = None
            raise CredentialUnavailable(f"the AWS profile `{profile}` is in no shared config file.") from None
        except Exception as exc:
            # botocore's messages may quote a credential_process's output: never shown.
            self.creds = None
            raise CredentialUnavailable(
                f"reading AWS credentials failed ({type(exc).__name__}); the details are not shown, "
                "as they could hold a secret."
            ) from None
        if frozen is None or not frozen.access_key or not frozen.secret_key:
            self.creds = None
            where = f"profile `{profile}`" if profile else "the environment, the shared files or the instance"
            raise CredentialUnavailable(f"the AWS credential chain found no keys ({where}).")
        return Keys(frozen.access_key, frozen.secret_key, frozen.token or None), isinstance(
            creds, RefreshableCredentials
        )


@register
@dataclass(frozen=True, slots=True)
class AwsSigV4(Grant):
    type_name = "aws_sigv4"
    fetches = True
    # The chain is read by each process from its own environment and files: no
    # record in the token store, and nothing of it shared between workers.
    uses_store = True

    service: str | None
    region: str | None
    profile: str | None
    ttl: float
    skew: float
    chain: _Chain = field(default_factory=_Chain, compare=False)

    @classmethod
    def parse(cls, sec: Section) -> AwsSigV4:
        service = sec.text("service")
        if service is not None and not _NAME.match(service):
            sec.error("service", f"`{service}` is not an AWS signing name such as `s3`, `sqs` or `execute-api`")
        region = sec.text("aws_region")
        if region is not None and not _REGION.match(region):
            sec.error("aws_region", f"`{region}` is not an AWS region such as `us-east-1`")
        profile = sec.text("profile")
        ttl = sec.number("default_ttl", 300.0, minimum=1.0)
        skew = sec.number("refresh_skew", min(60.0, ttl / 2))
        if importlib.util.find_spec("botocore") is None:
            sec.error("type", "`aws_sigv4` needs botocore, which is not installed: install `authproxy[aws]`")
        return cls(service, region, profile, ttl, skew)

    def refresh_skew(self) -> float:
        return self.skew

    async def fetch(self, ctx: GrantContext) -> Credential:
        try:
            async with asyncio.timeout(ctx.deadline):
                keys, refreshable = await asyncio.to_thread(self.chain.read, self.profile)
        except TimeoutError:
            raise TokenEndpointTimeout(
                f"reading AWS credentials did not finish within {ctx.deadline:g} s.", ctx.route
            ) from None
        # The secret key and session token are known to the redactor before anything can print them.
        REDACTOR.learn(keys.secret_key, *([keys.token] if keys.token else []), slot=f"aws:{ctx.route}")
        signer = AwsSigner(keys, self.service, self.region, self.chain.region)
        self.chain.last = signer
        ttl = min(self.ttl, _REFRESHABLE_TTL) if refreshable else self.ttl
        return Credential(expires_at=time.time() + ttl, signer=signer)
