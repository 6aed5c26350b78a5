"""The placeholder scan, attacked with generated cases: any split of the tunnel bytes, any place in a head.

The tunnel scan reads from a real ``asyncio.StreamReader`` fed segment by
segment, as a socket would; the head scan gets headers and targets built
around a placeholder at any position.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authproxy.placeholders.index import Placeholders
from authproxy.placeholders.tunnelscan import WINDOW, ScanningSource

PH = "authproxy-ph-api-0123456789abcdef0123456789abcdef"
OTHER = "authproxy-ph-b-ffeeddccbbaa99887766554433221100"
INDEX = Placeholders({"api": PH, "b": OTHER}, {})
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Bytes that cannot complete a placeholder by accident.
noise = st.binary(max_size=3000).map(lambda b: b.replace(b"a", b"x"))


def _relay(segments: list[bytes]) -> tuple[bytes, str | None]:
    """What a tunnel pump would pass on from these segments, and the route whose placeholder stopped it."""

    async def run() -> tuple[bytes, str | None]:
        reader = asyncio.StreamReader()
        hits: list[str] = []
        src = ScanningSource(reader, INDEX, hits.append)
        out = b""
        for seg in segments:
            reader.feed_data(seg)
            taken = 0
            while taken < len(seg):  # what arrived, in reads of a tunnel pump's size
                data = await src.read(65536)
                if not data:
                    return out, hits[0]
                taken += len(data)
                out += data
        return out, (hits[0] if hits else None)

    return asyncio.run(run())


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@FAST
@given(before=noise, after=noise, cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_a_placeholder_anywhere_in_the_window_is_caught_however_split(
    before: bytes, after: bytes, cuts: list[int]
) -> None:
    data = before + PH.encode() + after
    relayed, hit = _relay(_split(data, cuts))
    assert hit == "api"
    assert PH.encode() not in relayed  # the segment that completed it was never passed on


@FAST
@given(data=noise, cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_bytes_without_a_placeholder_pass_unchanged(data: bytes, cuts: list[int]) -> None:
    data += PH[:-1].encode()  # all but its last byte: no match, and the tail kept for the next segment
    relayed, hit = _relay(_split(data, cuts))
    assert hit is None and relayed == data


def test_only_the_first_window_is_scanned() -> None:
    data = b"x" * WINDOW + PH.encode()
    relayed, hit = _relay([data[:40000], data[40000:]])
    assert hit is None and relayed == data
    relayed, hit = _relay([b"x" * (WINDOW - 10) + PH.encode()])
    assert hit == "api"  # it starts inside the window


@FAST
@given(
    where=st.sampled_from(["header", "target", "percent", "basic-user", "basic-password"]),
    pre=st.text(alphabet="xyz-_/=", max_size=40),
    post=st.text(alphabet="xyz-_/=", max_size=40),
    which=st.sampled_from([("api", PH), ("b", OTHER)]),
)
def test_the_head_scan_finds_a_placeholder_wherever_a_client_puts_it(
    where: str, pre: str, post: str, which: tuple[str, str]
) -> None:
    route, ph = which
    target = "/v1/x?q=1"
    headers = [(b"Accept", b"*/*"), (b"User-Agent", b"t")]
    if where == "header":
        headers.append((b"X-Anything", (pre + ph + post).encode()))
    elif where == "target":
        target = f"/v1/{pre}?k={ph}{post}"
    elif where == "percent":
        target = "/v1/x?k=" + "".join(f"%{b:02x}" for b in ph.encode())
    else:
        pair = f"{pre}:{ph}{post}" if where == "basic-password" else f"{pre.replace(':', '')}{ph}:{post}"
        headers.append((b"Authorization", b"Basic " + base64.b64encode(pair.encode())))
    assert INDEX.found(target, headers) == {route}


def test_the_head_scan_sees_nothing_in_a_clean_head() -> None:
    headers = [
        (b"Authorization", b"Basic " + base64.b64encode(b"u:" + PH[:-1].encode())),
        (b"X", quote(PH[1:]).encode()),
    ]
    assert INDEX.found("/v1/x?k=" + PH[:-2], headers) == set()
