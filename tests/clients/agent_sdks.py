"""A sandboxed agent's side: the OpenAI and Anthropic SDKs, configured only from the environment.

Run with the variables ``authproxy env --placeholders`` printed (the proxy,
its CA, and OPENAI_API_KEY / ANTHROPIC_API_KEY holding placeholders), plus
OPENAI_BASE_URL / ANTHROPIC_BASE_URL. Prints one JSON object: every header
and body byte the SDKs' HTTP client received, and the text each call gave.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
from typing import Any

import anthropic
import openai

received: list[str] = []


def _record(resp: Any) -> None:
    received.append(f"status {resp.status_code}")
    received.extend(f"{k}: {v}" for k, v in resp.headers.items())


def _client(http: Any) -> Any:
    """A client of the SDK's own HTTP library (httpx, or httpx2 for newer Anthropic SDKs) whose
    transport copies out every response's headers and body bytes as they are read. The proxy and
    CA are the ones the environment names, given to that transport (httpx would otherwise mount
    its own for an environment proxy, past the copy)."""

    class Tee(http.HTTPTransport):  # type: ignore[misc,name-defined]
        def handle_request(self, request: Any) -> Any:
            resp = super().handle_request(request)
            _record(resp)
            inner = resp.stream

            class Copy(http.SyncByteStream):  # type: ignore[misc,name-defined]
                def __iter__(self) -> Any:
                    for chunk in inner:
                        received.append(chunk.decode("utf-8", "replace"))
                        yield chunk

                def close(self) -> None:
                    inner.close()

            resp.stream = Copy()
            return resp

    ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    return http.Client(transport=Tee(proxy=os.environ["HTTPS_PROXY"], verify=ctx), trust_env=False)


def _http_of(sdk: Any) -> Any:
    """The HTTP library an SDK is built on: httpx2 in newer releases, httpx before."""
    base = sdk._base_client
    return getattr(base, "httpx2", None) or base.httpx


def main() -> None:
    out: dict[str, Any] = {}
    oa = openai.OpenAI(http_client=_client(_http_of(openai)), max_retries=0)
    done = oa.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    out["openai"] = done.choices[0].message.content
    parts = []
    for chunk in oa.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    out["openai_stream"] = parts
    an = anthropic.Anthropic(http_client=_client(_http_of(anthropic)), max_retries=0)
    msg = an.messages.create(model="claude-test", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    out["anthropic"] = msg.content[0].text  # type: ignore[union-attr]
    with an.messages.stream(model="claude-test", max_tokens=16, messages=[{"role": "user", "content": "hi"}]) as s:
        out["anthropic_stream"] = list(s.text_stream)
    out["received"] = received
    sys.stdout.write(json.dumps(out))


if __name__ == "__main__":
    main()
