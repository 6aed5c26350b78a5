"""type: token_exchange (RFC 8693) against a small endpoint of the tests' own (``tests/support/sts_server.py``).

The first test replays RFC 8693 §2.3's example: the request the proxy sends
must be the RFC's, and the RFC's answer must give the upstream its token.
``subject_route`` chains through another route's grant (client_credentials at
the Authlib server), and ``check`` refuses cycles.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.support.sts_server import CLIENT_ID, CLIENT_SECRET, STS, TYPE, start_sts

from .conftest import assert_no_secrets

# RFC 8693 §2.3's example subject token and resource.
SUBJECT = "accVkjcJyb4BWCxGsndESCJQbdFMogUC5PbRDqceLTC"
RESOURCE = "https://backend.example.com/api"
IDP_SECRET = "idp-client-secret-8675309"


@pytest.fixture
async def sts() -> AsyncIterator[STS]:
    server = await start_sts()
    yield server
    await server.server.close()


def sts_guard(upstream, sts: STS) -> None:
    upstream.check_auth = lambda h: bool(h and h.startswith("Bearer ") and sts.is_valid(h[7:]))


async def test_rfc8693_section_2_3_example(make_proxy, upstream, sts, secret_env, tmp_path) -> None:
    secret_env("STS_SECRET", CLIENT_SECRET)
    (tmp_path / "subject").write_text(SUBJECT + "\n")
    sts.targets = (RESOURCE,)
    sts_guard(upstream, sts)
    p = await make_proxy(
        f"""
        routes:
          - name: backend
            match: {upstream.authority}
            auth:
              type: token_exchange
              token_url: {sts.token_url}
              client_id: {CLIENT_ID}
              client_secret: ${{STS_SECRET}}
              subject_token_file: {tmp_path / "subject"}
              subject_token_type: access_token
              resource: {RESOURCE}
        """
    )
    p.secrets.update([CLIENT_SECRET, SUBJECT])
    async with httpx.AsyncClient(proxy=p.url) as client:
        for i in range(3):
            assert (await client.get(f"{upstream.url}/r{i}")).status_code == 200
        sts.issued.clear()  # the STS forgets what it issued: the next request gets a 401
        assert (await client.post(f"{upstream.url}/again", content=b"once more")).status_code == 200
    # §2.3's request, field by field.
    first = sts.requests[0]
    assert first["authorization"] == "Basic cnMwODpsb25nLXNlY3VyZS1yYW5kb20tc2VjcmV0"
    assert first["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert (first["resource"], first["subject_token"]) == (RESOURCE, SUBJECT)
    assert first["subject_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert "requested_token_type" not in first
    assert len(sts.requests) == 2  # cached, then one exchange after the 401
    assert "token=retried" in p.access_lines()[-1]
    p.secrets.update(sts.issued)


async def test_token_type_n_a_is_sent_as_bearer(make_proxy, upstream, sts, secret_env, tmp_path) -> None:
    """§2.2.1: a JWT that is not an access token comes with token_type N_A; the route presents it as a bearer."""
    secret_env("STS_SECRET", CLIENT_SECRET)
    (tmp_path / "id-token").write_text("eyJ.subject-id-token.sig")
    helper = tmp_path / "print-token.py"
    helper.write_text(f"print(open({str(tmp_path / 'id-token')!r}).read())\n")
    sts.accept_subject = lambda token, kind: kind == TYPE + "id_token"
    sts_guard(upstream, sts)
    p = await make_proxy(
        f"""
        routes:
          - name: partner
            match: {upstream.authority}
            auth:
              type: token_exchange
              token_url: {sts.token_url}
              client_id: {CLIENT_ID}
              client_secret: ${{STS_SECRET}}
              subject_token_command: [{sys.executable}, {helper}]
              subject_token_type: id_token
              requested_token_type: urn:ietf:params:oauth:token-type:jwt
              scope: partner.read
        """
    )
    p.secrets.update([CLIENT_SECRET, "eyJ.subject-id-token.sig"])
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/x")
    assert r.status_code == 200
    sent = dict((k.lower(), v) for k, v in upstream.seen[-1]["headers"])
    assert sent["authorization"].startswith("Bearer sts-")  # not "N_A sts-..."
    req = sts.requests[-1]
    assert (req["requested_token_type"], req["scope"]) == (TYPE + "jwt", "partner.read")
    p.secrets.update(sts.issued)


async def test_subject_route_chains_through_another_routes_grant(
    make_proxy, upstream, sts, oauth_server, secret_env
) -> None:
    secret_env("STS_SECRET", CLIENT_SECRET)
    secret_env("IDP_SECRET", IDP_SECRET)
    oauth_server.add_client("idp-client", IDP_SECRET)
    # The STS takes only live access tokens of the first authorization server, bare (no "Bearer ").
    sts.accept_subject = lambda token, kind: kind == TYPE + "access_token" and oauth_server.is_valid(token)
    sts_guard(upstream, sts)
    p = await make_proxy(
        f"""
        routes:
          - name: api
            match: {upstream.authority}
            auth:
              type: token_exchange
              token_url: {sts.token_url}
              client_id: {CLIENT_ID}
              client_secret: ${{STS_SECRET}}
              subject_route: idp
              audience: https://backend.example.com
          - name: idp
            match: idp.internal.test
            auth: {{type: client_credentials, token_url: {oauth_server.token_url}, client_id: idp-client,
                    client_secret: "${{IDP_SECRET}}", scope: read}}
        """
    )
    sts.targets = ("https://backend.example.com",)
    p.secrets.update([CLIENT_SECRET, IDP_SECRET])
    async with httpx.AsyncClient(proxy=p.url) as client:
        rs = [await client.get(f"{upstream.url}/c{i}") for i in range(3)]
    assert [r.status_code for r in rs] == [200] * 3
    assert oauth_server.token_requests() == 1 and len(sts.requests) == 1
    (subject,) = oauth_server.issued()
    assert sts.requests[0]["subject_token"] == subject  # the raw token, not "Bearer ..."
    assert sts.requests[0]["audience"] == "https://backend.example.com"
    p.secrets.update([subject, *sts.issued])


async def test_a_failing_subject_route_is_a_502_naming_it(make_proxy, upstream, sts, oauth_server) -> None:
    p = await make_proxy(
        f"""
        routes:
          - name: api
            match: {upstream.authority}
            auth: {{type: token_exchange, token_url: {sts.token_url}, subject_route: idp}}
          - name: idp
            match: idp.internal.test
            auth: {{type: client_credentials, token_url: {oauth_server.token_url}, client_id: nobody,
                    client_secret: nobody-secret-1234}}
        """
    )
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/x")
    assert r.status_code == 502 and r.json()["route"] == "api"
    assert r.json()["error"] == "credential_unavailable"
    assert "route idp" in r.json()["detail"] and "invalid_client" in r.json()["detail"]
    assert sts.requests == []


@pytest.mark.parametrize("fault", ["no issued_token_type", "another type"])
async def test_an_answer_that_is_not_rfc_8693s_is_a_502(
    fault: str, make_proxy, upstream, sts, secret_env, tmp_path
) -> None:
    secret_env("STS_SECRET", CLIENT_SECRET)
    (tmp_path / "subject").write_text(SUBJECT)
    sts.omit_issued_type = fault == "no issued_token_type"
    asked = "access_token" if sts.omit_issued_type else "urn:example:token-type:custom"
    p = await make_proxy(
        f"""
        routes:
          - name: backend
            match: {upstream.authority}
            auth: {{type: token_exchange, token_url: {sts.token_url}, client_id: {CLIENT_ID},
                    client_secret: "${{STS_SECRET}}", subject_token_file: {tmp_path / "subject"},
                    requested_token_type: {asked}}}
        """
    )
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/x")
    p.bodies.append(r.text)
    assert r.status_code == 502 and r.json()["error"] == "token_endpoint_error"
    assert ("no issued_token_type" if sts.omit_issued_type else "another type of token") in r.json()["detail"]
    assert upstream.seen == []
    p.secrets.update([CLIENT_SECRET, SUBJECT, *sts.issued])


async def test_token_command_shows_the_exchanged_token_masked(upstream, sts, oauth_server, tmp_path) -> None:
    """`authproxy token` goes through the token layer too: subject_route works there, and nothing leaks."""
    oauth_server.add_client("idp-client", IDP_SECRET)
    sts.accept_subject = lambda token, kind: oauth_server.is_valid(token)
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "routes:\n"
        f"  - {{name: api, match: api.test, auth: {{type: token_exchange, token_url: {sts.token_url},"
        f" client_id: {CLIENT_ID}, client_secret: '${{STS_SECRET}}', subject_route: idp}}}}\n"
        f"  - {{name: idp, match: idp.test, auth: {{type: client_credentials, token_url: {oauth_server.token_url},"
        " client_id: idp-client, client_secret: '${IDP_SECRET}'}}\n"
    )
    env = {"PATH": "/usr/bin:/bin", "STS_SECRET": CLIENT_SECRET, "IDP_SECRET": IDP_SECRET, "AUTHPROXY_DEBUG": "1"}
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "authproxy", "token", "api", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "Authorization: Bearer ****"
    assert len(sts.requests) == 1 and oauth_server.token_requests() == 1
    assert_no_secrets([run.stdout, run.stderr], [CLIENT_SECRET, IDP_SECRET, *oauth_server.issued(), *sts.issued])


def test_check_refuses_a_cycle_of_subject_routes(tmp_path: Path) -> None:
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        "routes:\n"
        "  - {name: a, match: a.test, auth: {type: token_exchange, token_url: https://sts.test/t, subject_route: b}}\n"
        "  - {name: b, match: b.test, auth: {type: token_exchange, token_url: https://sts.test/t, subject_route: c}}\n"
        "  - {name: c, match: c.test, auth: {type: token_exchange, token_url: https://sts.test/t, subject_route: a}}\n"
        "  - {name: d, match: d.test, auth: {type: token_exchange, token_url: https://sts.test/t, subject_route: d}}\n"
        "  - {name: e, match: e.test, auth: {type: token_exchange, token_url: https://sts.test/t, subject_route: zz}}\n"
        "  - {name: f, match: f.test, auth: {type: token_exchange, token_url: https://sts.test/t, subject_route: g}}\n"
        "  - {name: g, match: g.test, auth: {type: basic, username: u, password: pw-pw-pw-pw}}\n"
        "  - {name: h, match: h.test, auth: {type: token_exchange, token_url: https://sts.test/t, subject_route: a}}\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "authproxy", "check", "-c", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2, run.stdout
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert f"error: {cfg}:2: routes[0].auth.subject_route: a cycle of subject routes: a → b → c → a" in errors
    assert f"error: {cfg}:3: routes[1].auth.subject_route: a cycle of subject routes: b → c → a → b" in errors
    assert f"error: {cfg}:4: routes[2].auth.subject_route: a cycle of subject routes: c → a → b → c" in errors
    assert f"error: {cfg}:5: routes[3].auth.subject_route: a cycle of subject routes: d → d" in errors
    assert f"error: {cfg}:6: routes[4].auth.subject_route: route `zz` does not exist" in errors
    assert any(":7: routes[5].auth.subject_route: route `g` holds a user name and password" in e for e in errors)
    assert len(errors) == 6, errors  # h leads into the cycle but is not part of it
    assert_no_secrets([run.stdout, run.stderr], ["pw-pw-pw-pw"])


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("scope: x", "give `subject_token_file`, `subject_token_command` or `subject_route`"),
        ("subject_token_file: t, subject_route: b", "not several"),
        ("subject_route: b, subject_token_type: opaque", "must be a token type URI"),
        ("subject_route: b, requested_token_type: jwt, signing_alg: RS256", "goes with `signing_key`"),
    ],
)
def test_check_reports_token_exchange_problems(tmp_path: Path, body: str, said: str) -> None:
    from authproxy.config import ConfigError, load

    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        f"routes:\n  - {{name: a, match: a.test, auth: {{type: token_exchange, token_url: https://s.test/t, {body}}}}}\n"
        "  - {name: b, match: b.test, auth: {type: bearer, token: some-token-value}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load(cfg)
    assert said in str(info.value) and ":2:" in str(info.value), str(info.value)
