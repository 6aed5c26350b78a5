"""The deployment files: the Kubernetes manifests and the Compose file's profiles.

No cluster and no Docker engine run here, so they are checked statically, each by
the strictest judge available offline:
- every manifest by ``kubernetes-validate --strict`` against the schemas of a
  current Kubernetes release (bundled with it), unknown fields refused;
- the Compose file by ``compose-spec`` (the compose_spec crate's strict parser:
  unknown keys refused, references to secrets and volumes checked);
- the wiring between objects a validator cannot see: selectors, volume and port
  names, the grace period against the drain, Secret names the manual tells users
  to create;
- every route table they ship by ``authproxy check``, run on the files as a pod
  or container would see them (ConfigMaps and Secrets mounted where the
  manifests say, the environment the manifests give).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(K8S.rglob("*.yaml"))
COMPOSE = ROOT / "docker-compose.yml"
DOCS = ROOT / "docs" / "kubernetes.md"

# A bcrypt hash of a password nobody knows: what `authproxy hash-password` writes.
HASH = "$2b$12$" + "a" * 53
STORE_KEY = "q2d1cTJ6dHp5eGZ3bDNvM2c2cGt4bTR2Y3N1ZWJ0YTg="  # 32 bytes, Base64

# The Secrets docs/kubernetes.md tells a user to create, with stand-in values:
# the manifests may use no other (test_every_secret_is_documented).
SECRETS: dict[str, dict[str, str]] = {
    "authproxy-env": {
        "AUTHPROXY_ADMIN_TOKEN": "admin-token-0123456789abcdef",
        "AUTHPROXY_STORE_KEY": STORE_KEY,
        "EXAMPLE_API_KEY": "example-key-0123456789",
        "BILLING_CLIENT_ID": "billing-client",
    },
    "authproxy-redis": {"password": "redis-password-0123456789"},
    "authproxy-files": {"proxy_password_hash": HASH, "billing_client_secret": "billing-secret-0123456789"},
    "authproxy-ca": {},  # tls.crt and tls.key, made by `authproxy ca` below
    "reports-authproxy-env": {"AUTHPROXY_STORE_KEY": STORE_KEY, "BILLING_CLIENT_ID": "billing-client"},
    "reports-authproxy-files": {"billing_client_secret": "billing-secret-0123456789"},
}


def _route_table(text: str) -> dict[str, Any]:
    """A route table's structure; its ``${...}`` references stand in as plain words for YAML."""
    data: dict[str, Any] = yaml.safe_load(re.sub(r"\$\{[^}]*\}", "REF", text))
    return data


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _objects() -> list[dict[str, Any]]:
    return [d for p in MANIFESTS for d in _docs(p)]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in _objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _validate(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("kubernetes-validate")
    cmd = [exe] if exe else [sys.executable, "-m", "kubernetes_validate"]
    return subprocess.run([*cmd, "--strict", *map(str, paths)], capture_output=True, text=True, timeout=120)


def test_manifests_pass_strict_schema_validation() -> None:
    assert {p.parent.name for p in MANIFESTS} == {"gateway", "sidecar"}
    res = _validate(MANIFESTS)
    assert res.returncode == 0, res.stdout + res.stderr
    passed = re.findall(r"passed for resource (\S+)", res.stdout + res.stderr)
    kinds = {o["kind"].lower() + "/" + o["metadata"]["name"] for o in _objects()}
    assert set(passed) == kinds  # every object was judged, none skipped


def test_strict_validation_refuses_an_unknown_field(tmp_path: Path) -> None:
    """The negative control: the validator is strict, and works offline."""
    bad = (
        (K8S / "gateway" / "20-gateway.yaml").read_text().replace("  replicas: 3\n", "  replicas: 3\n  replica: 3\n", 1)
    )
    assert bad != (K8S / "gateway" / "20-gateway.yaml").read_text()
    (tmp_path / "bad.yaml").write_text(bad)
    res = _validate([tmp_path / "bad.yaml"])
    assert res.returncode != 0
    assert "replica" in res.stdout + res.stderr


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.mark.parametrize(
    "kind,name", [("Deployment", "authproxy"), ("StatefulSet", "authproxy-redis"), ("Deployment", "reports")]
)
def test_workload_wiring(kind: str, name: str) -> None:
    obj = _one(kind, name)
    ns = obj["metadata"]["namespace"]
    selector = obj["spec"]["selector"]["matchLabels"]
    labels = obj["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    spec = _pod_spec(obj)
    volumes = {v["name"]: v for v in spec["volumes"]}
    claims = {c["metadata"]["name"] for c in obj["spec"].get("volumeClaimTemplates", [])}
    for c in _containers(spec):
        c_sec = c["securityContext"]
        assert c_sec["allowPrivilegeEscalation"] is False and c_sec["readOnlyRootFilesystem"] is True
        assert c_sec["capabilities"]["drop"] == ["ALL"]
        ports = {p["name"] for p in c.get("ports", [])}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            for action in ("httpGet", "tcpSocket"):
                port = c.get(probe, {}).get(action, {}).get("port")
                if isinstance(port, str):
                    assert port in ports, f"{c['name']}.{probe} names port {port}"
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes or m["name"] in claims, m["name"]
    for v in volumes.values():
        if "configMap" in v:
            _one("ConfigMap", v["configMap"]["name"])
            assert _one("ConfigMap", v["configMap"]["name"])["metadata"]["namespace"] == ns
        if "secret" in v:
            assert v["secret"]["secretName"] in SECRETS
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False


def test_gateway_service_budget_and_drain() -> None:
    dep = _one("Deployment", "authproxy")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["replicas"] >= 3
    for kind in ("Service", "PodDisruptionBudget"):
        obj = _one(kind, "authproxy")
        sel = obj["spec"]["selector"]
        sel = sel.get("matchLabels", sel)
        assert sel.items() <= labels.items(), kind
    assert _one("PodDisruptionBudget", "authproxy")["spec"]["maxUnavailable"] == 1
    spec = _pod_spec(dep)
    (c,) = spec["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # SIGTERM comes after preStop; the drain must end before the kubelet's SIGKILL.
    routes = _route_table(_one("ConfigMap", "authproxy-config")["data"]["routes.yaml"])
    pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] >= pause + routes["timeouts"]["drain"] + 5
    # The service the route table's store URL names exists, on the port it names.
    url = routes["token_store"]["url"]
    host, port = re.search(r"@([^:/]+):(\d+)", url).groups()  # type: ignore[union-attr]
    svc = _one("Service", host)
    assert int(port) in {p["port"] for p in svc["spec"]["ports"]}


def test_redis_is_reached_only_by_authproxy() -> None:
    pol = _one("NetworkPolicy", "authproxy-redis")
    redis = _one("StatefulSet", "authproxy-redis")
    assert pol["spec"]["podSelector"]["matchLabels"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    allowed = [f["podSelector"]["matchLabels"] for rule in pol["spec"]["ingress"] for f in rule["from"]]
    gateway = _one("Deployment", "authproxy")["spec"]["template"]["metadata"]["labels"]
    sidecar = _one("Deployment", "reports")["spec"]["template"]["metadata"]["labels"]
    assert any(a.items() <= gateway.items() for a in allowed)
    assert any(a.items() <= sidecar.items() for a in allowed)
    args = " ".join(_pod_spec(redis)["containers"][0]["args"])
    assert "--appendonly yes" in args and "noeviction" in args
    assert "$REDIS_PASSWORD" not in args.split("redis-server", 1)[1]  # never on the command line


def test_every_secret_is_documented() -> None:
    text = DOCS.read_text()
    used: set[str] = set()
    for obj in _objects():
        if obj["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        spec = _pod_spec(obj)
        used |= {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
        for c in _containers(spec):
            used |= {e["secretRef"]["name"] for e in c.get("envFrom", [])}
            used |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", []) if "valueFrom" in e}
    assert used == set(SECRETS)
    for name, keys in SECRETS.items():
        assert "kubectl create secret" in text and f" {name} " in text, name
        for key in keys:
            assert key in text, f"{name}.{key} is not in {DOCS.name}"


def _make_ca(tmp: Path) -> tuple[str, str]:
    state = tmp / "ca-state"
    cfg = tmp / "ca.yaml"
    cfg.write_text(f"state_dir: {state}\nroutes: []\n")
    subprocess.run(
        [sys.executable, "-m", "authproxy", "ca", "-c", str(cfg)], check=True, capture_output=True, timeout=60
    )
    return (state / "ca.pem").read_text(), (state / "ca-key.pem").read_text()


def _check(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authproxy", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(config.parent), **env},
        cwd=ROOT,
    )


def _pod_files(
    obj: dict[str, Any], container: str, root: Path, ca: tuple[str, str]
) -> tuple[dict[str, str], list[str]]:
    """Lay out under ``root`` what ``container`` sees mounted; its environment; the mount paths."""
    spec = _pod_spec(obj)
    (c,) = [c for c in _containers(spec) if c["name"] == container]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = []
    for m in c["volumeMounts"]:
        where = root / m["mountPath"].lstrip("/")
        where.mkdir(parents=True, exist_ok=True)
        mounts.append(m["mountPath"])
        v = volumes[m["name"]]
        if "configMap" in v:
            for key, text in _one("ConfigMap", v["configMap"]["name"])["data"].items():
                (where / key).write_text(text)
        elif "secret" in v:
            name = v["secret"]["secretName"]
            data = {"tls.crt": ca[0], "tls.key": ca[1]} if name == "authproxy-ca" else SECRETS[name]
            for key, text in data.items():
                (where / key).write_text(text)
    env: dict[str, str] = {}
    for e in c.get("envFrom", []):
        env.update(SECRETS[e["secretRef"]["name"]])
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        env[e["name"]] = SECRETS[ref["name"]][ref["key"]] if ref else e["value"]
    return env, mounts


@pytest.mark.parametrize(
    "kind,name,container,configmap",
    [
        ("Deployment", "authproxy", "authproxy", "authproxy-config"),
        ("Deployment", "reports", "authproxy", "reports-authproxy"),
    ],
)
def test_shipped_route_tables_pass_check(tmp_path: Path, kind: str, name: str, container: str, configmap: str) -> None:
    """`authproxy check` on the route table as the pod sees it: every path and variable it names is there."""
    root = tmp_path / "pod"
    env, mounts = _pod_files(_one(kind, name), container, root, _make_ca(tmp_path))
    (cfg_mount,) = [m for m in mounts if (root / m.lstrip("/") / "routes.yaml").exists()]
    cfg = root / cfg_mount.lstrip("/") / "routes.yaml"
    text = cfg.read_text()
    # One pass, longest mount first, so a path already rewritten is not rewritten again.
    mounted = re.compile("|".join(re.escape(m) for m in sorted(mounts, key=len, reverse=True)))
    text = mounted.sub(lambda m: str(root) + m.group(0), text)
    cfg.write_text(text)
    res = _check(cfg, env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "token_store" in text
    for value in (*SECRETS["authproxy-env"].values(), SECRETS["authproxy-redis"]["password"]):
        if value != "billing-client":
            assert value not in res.stdout + res.stderr


# --- Compose ---------------------------------------------------------------


def _compose() -> dict[str, Any]:
    from compose_spec import PyCompose

    parsed = PyCompose.from_yaml(COMPOSE.read_text())
    parsed.validate()
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_compose_file_is_valid_and_strict() -> None:
    from compose_spec import PyCompose

    _compose()
    with pytest.raises(Exception, match="x-"):
        PyCompose.from_yaml(
            COMPOSE.read_text().replace("    read_only: true\n", "    read_only: true\n    readonly: true\n", 1)
        )


def test_compose_replicas_profile() -> None:
    c = _compose()
    services = c["services"]
    assert "profiles" not in services["authproxy"]  # `docker compose up` alone is one proxy, as before
    for name in ("redis", "replica", "lb"):
        assert services[name]["profiles"] == ["replicas"]
    rep = services["replica"]
    assert rep["deploy"]["replicas"] == 3
    assert rep["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "ports" not in rep  # the load balancer is the only way in
    assert "--appendonly yes" in " ".join(services["redis"]["command"])
    haproxy = (ROOT / "docker" / "haproxy.cfg").read_text()
    assert re.search(r"server-template \S+ \d+ replica:8080 ", haproxy)
    assert services["lb"]["ports"] == ["127.0.0.1:8081:8080"]
    routes = _route_table((ROOT / "docker" / "replicas.yaml").read_text())
    grace = int(rep["stop_grace_period"].rstrip("s"))
    assert grace > routes["timeouts"]["drain"]
    assert "@redis:6379" in routes["token_store"]["url"]


def test_compose_replica_route_table_passes_check(tmp_path: Path) -> None:
    """docker/replicas.yaml as a replica sees it: ./docker at /etc/authproxy, compose secrets at /run/secrets."""
    c = _compose()
    rep = c["services"]["replica"]
    ca = _make_ca(tmp_path)
    files = {
        "proxy_password_hash": HASH,
        "billing_client_secret": "billing-secret-0123456789",
        "ca_cert": ca[0],
        "ca_key": ca[1],
    }
    assert set(rep["secrets"]) == set(files)
    secrets_dir = tmp_path / "run" / "secrets"
    secrets_dir.mkdir(parents=True)
    for name, text in files.items():
        (secrets_dir / name).write_text(text)
    text = (ROOT / "docker" / "replicas.yaml").read_text().replace("/run/secrets/", f"{secrets_dir}/")
    cfg = tmp_path / "replicas.yaml"
    cfg.write_text(text.replace("/var/lib/authproxy", str(tmp_path / "state")))
    env = {
        "AUTHPROXY_ADMIN_TOKEN": "admin-token-0123456789abcdef",
        "AUTHPROXY_STORE_KEY": STORE_KEY,
        "REDIS_PASSWORD": "redis-password-0123456789",
        "EXAMPLE_API_KEY": "example-key-0123456789",
        "BILLING_CLIENT_ID": "billing-client",
    }
    assert set(env) == set(rep["environment"])
    res = _check(cfg, env)
    assert res.returncode == 0, res.stdout + res.stderr
