"""An AWS endpoint's signing service and region, read from its host name.

The shapes AWS uses (``endpoints.json`` of the SDKs, the S3 user guide's
"Virtual hosting of buckets"):

- ``SERVICE.REGION.amazonaws.com`` (``sqs.us-east-1``), also under
  ``amazonaws.com.cn`` and with ``-fips`` or ``.dualstack`` variants;
- a global endpoint ``SERVICE.amazonaws.com`` (``sts``, ``iam``, ``s3``),
  signed for ``us-east-1`` (``cn-north-1`` in China);
- S3 virtual-hosted buckets: ``BUCKET.s3.amazonaws.com``,
  ``BUCKET.s3.REGION.amazonaws.com``, ``BUCKET.s3-REGION.amazonaws.com``,
  ``BUCKET.s3.dualstack.REGION.amazonaws.com``;
- API Gateway and other per-resource hosts: ``ID.execute-api.REGION.amazonaws.com``.

An endpoint prefix that differs from its signing name is mapped
(``email`` → ``ses``). A host that matches none of these gives None; the
route's ``service`` and ``aws_region`` say then.
"""

from __future__ import annotations

import re
from functools import lru_cache

# Endpoint prefix → signing name, where they differ.
_SIGNING_NAME = {
    "email": "ses",
    "runtime.sagemaker": "sagemaker",
    "bedrock-runtime": "bedrock",
    "bedrock-agent-runtime": "bedrock",
    "data.iot": "iotdata",
    "runtime.lex": "lex",
    "streams.dynamodb": "dynamodb",
    "monitoring": "monitoring",
}
_SUFFIXES = (".amazonaws.com.cn", ".amazonaws.com")
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
_S3_DASH = re.compile(r"^s3-((?:[a-z]{2}(?:-gov)?-[a-z]+-\d)|external-1)$")


@lru_cache(maxsize=1024)
def infer(host: str) -> tuple[str, str] | None:
    """(service, region) for an AWS host, or None when the host does not say."""
    suffix = next((s for s in _SUFFIXES if host.endswith(s)), None)
    if suffix is None:
        return None
    global_region = "cn-north-1" if suffix == ".amazonaws.com.cn" else "us-east-1"
    labels = host[: -len(suffix)].split(".")
    if not labels or not all(labels):
        return None
    s3 = _s3(labels, global_region)
    if s3 is not None:
        return s3
    # The region is the last label that looks like one; the service the label(s) before it.
    for i in range(len(labels) - 1, 0, -1):
        if _REGION.match(labels[i]):
            return _service(labels[:i]), labels[i]
    return _service(labels), global_region


def _s3(labels: list[str], global_region: str) -> tuple[str, str] | None:
    """Any host with an ``s3`` label (path-style or a virtual-hosted bucket), or an ``s3-REGION`` one."""
    for i, label in enumerate(labels):
        if label in ("s3", "s3-fips"):
            rest = [x for x in labels[i + 1 :] if x != "dualstack"]
            region = rest[0] if rest and _REGION.match(rest[0]) else global_region
            return "s3", region
        m = _S3_DASH.match(label)
        if m is not None:
            region = m.group(1)
            return "s3", global_region if region == "external-1" else region
    return None


def _service(labels: list[str]) -> str:
    # Per-resource hosts (ID.execute-api, ACCOUNT.dkr.ecr): the service is the label next to the region.
    prefix = ".".join(labels[-2:]) if ".".join(labels[-2:]) in _SIGNING_NAME else labels[-1]
    prefix = prefix.removesuffix("-fips")
    return _SIGNING_NAME.get(prefix, prefix)
