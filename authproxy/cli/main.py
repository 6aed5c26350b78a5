"""The ``authproxy`` command: run, check, token. Exit 0 ok, 2 usage/config, 1 anything else."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from authproxy import __version__
from authproxy.access import hash_password
from authproxy.cli.envvars import DEFAULT_NO_PROXY, default_no_proxy, no_proxy_note, render, variables
from authproxy.config import Config, Route, load, parse_listen
from authproxy.disk.ca import BUNDLE_NAME, CAError, CAFiles, LocalCA, ensure_ca
from authproxy.disk.state import ensure_dir
from authproxy.disk.store import StateStore
from authproxy.errors import ProxyError
from authproxy.net.destinations import Policy
from authproxy.net.hosts import HostError, format_authority, is_loopback
from authproxy.ops import accesslog
from authproxy.run.serve import serve
from authproxy.run.worker import WorkerLink, pinned, reuse_port_loop
from authproxy.runtime import Runtime
from authproxy.schema.problems import ConfigError
from authproxy.secrecy.redact import redact
from authproxy.server.memory import tune_asyncio_tls, tune_malloc

log = logging.getLogger("authproxy")


class UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="authproxy",
        description="A forward HTTP(S) proxy that adds credentials to outbound requests.",
    )
    p.add_argument("--version", action="version", version=f"authproxy {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the proxy")
    run.add_argument("-c", "--config", default="routes.yaml", help="route table (default ./routes.yaml)")
    run.add_argument("--listen", help="HOST:PORT to listen on (default from the file, else 127.0.0.1:8080)")
    run.add_argument("--log-format", choices=("text", "json"), default="text")
    run.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop; auto: uvloop when installed (the `fast` extra), else asyncio's",
    )
    run.add_argument(
        "--allow-open",
        action="store_true",
        help="listen beyond loopback without proxy_auth (anyone who reaches it spends your credentials)",
    )
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    run.add_argument(
        "--workers",
        default="1",
        metavar="N|auto",
        help="processes sharing the port (SO_REUSEPORT) under a supervisor; auto: one per CPU (default 1)",
    )
    # Set by the supervisor on the processes it starts (see worker.py), never by hand.
    run.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    run.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)
    run.add_argument("--worker-pin", help=argparse.SUPPRESS)

    check = sub.add_parser("check", help="validate the route table and print it")
    check.add_argument("-c", "--config", default="routes.yaml")
    check.add_argument("--strict", action="store_true", help="exit 2 on warnings too")

    token = sub.add_parser("token", help="obtain a route's credential and print what would be injected")
    token.add_argument("route")
    token.add_argument("-c", "--config", default="routes.yaml")
    token.add_argument("--show", action="store_true", help="print the value instead of masking it")

    ca = sub.add_parser("ca", help="print the local CA certificate's path, then how to trust it")
    ca.add_argument("-c", "--config", default="routes.yaml")

    env = sub.add_parser("env", help="print shell lines that point common tools at the proxy and its CA")
    env.add_argument("-c", "--config", default="routes.yaml")
    env.add_argument("--shell", choices=("sh", "bash", "zsh", "fish", "powershell"), default="sh")
    env.add_argument(
        "--no-proxy",
        help=f"NO_PROXY value, exactly (default {DEFAULT_NO_PROXY}, or none when a route matches a loopback host)",
    )
    env.add_argument("--listen", help="the proxy address to use, if not the file's `listen`")

    login = sub.add_parser("login", help="log in to an authorization_code route in a browser; store its refresh token")
    login.add_argument("route")
    login.add_argument("-c", "--config", default="routes.yaml")
    login.add_argument("--no-browser", action="store_true", help="print the address only; do not open a browser")
    login.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the login (default 300)")

    status = sub.add_parser("status", help="show each route's token state and traffic, from the admin listener")
    status.add_argument("-c", "--config", default="routes.yaml")
    status.add_argument("--admin", help="HOST:PORT of the admin listener, if not the file's `admin`")

    sub.add_parser("hash-password", help="read a password (prompt, or stdin) and print its bcrypt hash for proxy_auth")

    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        if args.command == "check":
            return cmd_check(args.config, args.strict)
        if args.command == "token":
            return cmd_token(args.config, args.route, args.show)
        if args.command == "login":
            return cmd_login(args.config, args.route, not args.no_browser, args.timeout)
        if args.command == "status":
            return cmd_status(args.config, args.admin)
        if args.command == "hash-password":
            return cmd_hash_password()
        if args.command == "ca":
            return cmd_ca(args.config)
        if args.command == "env":
            return cmd_env(args.config, args.shell, args.no_proxy, args.listen)
        return cmd_run(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(redact(str(problem)), file=sys.stderr)
        return 2
    except (UsageError, CAError) as exc:
        print(redact(f"error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 1
    except Exception as exc:  # a bug of ours: one line, no traceback (it could hold request data)
        print(f"error: authproxy failed unexpectedly ({type(exc).__name__}).", file=sys.stderr)
        if os.environ.get("AUTHPROXY_DEBUG") == "1":
            import traceback

            traceback.print_exc()
        return 1


def cmd_check(path: str, strict: bool) -> int:
    cfg = load(path)
    for w in cfg.warnings:
        print(redact(str(w)), file=sys.stderr)
    rows = [("NAME", "MODE", "MATCH", "TYPE", "SECRETS")]
    for r in cfg.routes:
        parts = [r.match.text] if r.match else []
        if r.gateway:
            parts.append(f"{r.gateway} -> {_upstream_text(r)}")
        match = " ".join(parts)
        secrets = " ".join(f"{k}={v}" for k, v in r.auth.sources()) or "-"
        rows.append((r.name, r.mode, match, r.auth.type_name, secrets))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print(redact("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=False)) + "  " + row[4]))
    # On stderr, so that stdout stays one line per route.
    beyond = not is_loopback(cfg.listen_host)
    policy = Policy.build(cfg.destinations, beyond_loopback=beyond)
    given = cfg.destinations is not None and cfg.destinations.deny is not None
    why = (
        "destinations.deny as written; link_local is always denied"
        if given
        else f"the defaults for listening on {cfg.listen}, {'beyond' if beyond else 'on'} loopback"
    )
    print(f"destinations for unmatched traffic: {policy.describe()} ({why}).", file=sys.stderr)
    return 2 if strict and cfg.warnings else 0


def _upstream_text(route: object) -> str:
    up = getattr(route, "upstream", None)
    if up is None:
        return "-"
    return f"{up.scheme}://{up.host}:{up.port}{up.path}"


def cmd_token(path: str, name: str, show: bool) -> int:
    cfg = load(path)
    route = _route(cfg, name, path)

    async def obtain() -> list[str]:
        rt = Runtime(cfg)
        try:
            cred, _ = await rt.tokens.get(route)
        finally:
            await rt.close()
        # --show prints the credential on purpose; everything else is redacted.
        return cred.shown_lines() if show else [redact(line) for line in cred.masked_lines()]

    try:
        lines = asyncio.run(obtain())
    except ProxyError as err:
        print(redact(f"error: route {name}: {err.detail}"), file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0


def cmd_status(path: str, admin: str | None) -> int:
    from authproxy.admin.statusclient import StatusRefused, fetch_status, status_table  # only this command

    # The file gives the token (and the address, unless --admin names one); with --admin, only if it exists.
    cfg = load(path) if admin is None or Path(path).exists() else None
    if admin is not None:
        try:
            where = parse_listen(admin)
        except HostError as exc:
            raise UsageError(f"--admin: {exc}.") from None
    elif cfg is None or cfg.admin is None:
        raise UsageError(f"{path} has no `admin:` listener to ask; set `admin: 127.0.0.1:9090` and restart.")
    else:
        where = cfg.admin
    token = cfg.admin_token if cfg is not None else None
    at = format_authority(*where)
    try:
        data = fetch_status(*where, token=None if token is None else token.reveal())
    except StatusRefused as exc:
        print(f"error: the admin listener at {at} {_refused(exc.status, path, token is not None)}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot reach the admin listener at {at} ({exc}).", file=sys.stderr)
        return 1
    # Redacted by the proxy already; and again here, with what this process knows of the file.
    sys.stdout.write(redact(status_table(data)))
    return 0


def _refused(status: int, path: str, sent_token: bool) -> str:
    """Why the admin listener said no, as the rest of a sentence."""
    if status == 401 and not sent_token:
        return f"wants its token, and {path} has none (set `admin.token` to the one the proxy runs with)."
    if status == 401:
        return f"refused the token in {path} (`admin.token`): it is not the one the proxy runs with."
    if status == 421:
        return "refused the Host it was asked by; ask it by its own address (--admin HOST:PORT)."
    return f"answered {status}."


def cmd_hash_password() -> int:
    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("error: the two passwords differ.", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("error: an empty password cannot be hashed.", file=sys.stderr)
        return 2
    try:
        hashed = hash_password(password)
    except ValueError as exc:
        print(f"error: {exc}; choose a shorter one.", file=sys.stderr)
        return 2
    print(hashed)
    return 0


def cmd_login(path: str, name: str, open_browser: bool, timeout: float) -> int:
    from authproxy.tokens.login import LoginError, login  # with aiohttp: only this command needs it

    cfg = load(path)
    route = _route(cfg, name, path)

    def say(text: str) -> None:
        print(redact(text), flush=True)

    try:
        where = asyncio.run(
            login(
                route,
                StateStore(cfg.state_dir),
                cfg.timeouts.token_fetch,
                wait=timeout,
                open_browser=open_browser,
                say=say,
            )
        )
    except LoginError as exc:
        print(redact(f"error: route {name}: {exc}"), file=sys.stderr)
        return 1
    print(redact(f"Logged in: route {name}'s refresh token is stored in {where}."))
    return 0


def _route(cfg: Config, name: str, path: str) -> Route:
    route = next((r for r in cfg.routes if r.name == name), None)
    if route is None:
        known = ", ".join(r.name for r in cfg.routes) or "none"
        raise UsageError(f"no route named `{name}` in {path} (routes: {known}).")
    return route


def _bundle(cfg: Config) -> tuple[CAFiles, Path, Path | None]:
    files = ensure_ca(cfg.state_dir, cfg.ca_cert, cfg.ca_key)
    ca = LocalCA(files)
    try:
        bundle = ensure_dir(cfg.state_dir) / BUNDLE_NAME
        roots = ca.write_bundle(bundle)
    finally:
        ca.close()
    return files, bundle, roots


def cmd_ca(path: str) -> int:
    cfg = load(path)
    files, bundle, roots = _bundle(cfg)
    cert = files.cert
    print(cert)
    print(
        f"""
This CA signs the certificates authproxy presents for the hosts your routes match.
Trust it in one of these ways:

  In this shell, for curl, git, pip, requests, httpx, Node, npm, cargo, the AWS CLI:
    eval "$(authproxy env -c {path})"
  (points each tool at {bundle},
   which holds the system roots{f" from {roots}" if roots else ""} plus this CA)

  System-wide on Debian/Ubuntu:
    sudo cp {cert} /usr/local/share/ca-certificates/authproxy.crt && sudo update-ca-certificates
  On Fedora/RHEL:
    sudo cp {cert} /etc/pki/ca-trust/source/anchors/authproxy.pem && sudo update-ca-trust
  On macOS (Go programs and Safari read only the keychain):
    sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {cert}
  For Java (it ignores all of the above), a truststore of its own, leaving the JDK's untouched
  (copy the JDK's lib/security/cacerts to authproxy.truststore first to keep its roots too):
    keytool -importcert -noprompt -alias authproxy -file {cert} -keystore authproxy.truststore -storepass changeit
    java -Djavax.net.ssl.trustStore=authproxy.truststore -Djavax.net.ssl.trustStorePassword=changeit ...

The key ({files.key}) can sign a certificate for any site: keep it private."""
    )
    return 0


def cmd_env(path: str, shell: str, no_proxy: str | None, listen: str | None) -> int:
    cfg = load(path)
    host, port = cfg.listen_host, cfg.listen_port
    if listen:
        try:
            host, port = parse_listen(listen)
        except HostError as exc:
            raise UsageError(f"--listen: {exc}.") from None
    _, bundle, _ = _bundle(cfg)
    url = f"http://{format_authority(host, port)}"
    notes: list[str] = []
    if no_proxy is None:
        no_proxy, local = default_no_proxy(cfg.routes)
        notes += [no_proxy_note(local)] if local else []
    pairs = variables(url, bundle, no_proxy)
    sys.stdout.write(render(pairs, "sh" if shell in ("bash", "zsh") else shell, notes))
    return 0


def _worker_count(text: str) -> int:
    if text == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))  # the CPUs this process may use (containers, taskset)
        except AttributeError:
            return os.cpu_count() or 1
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"--workers: `{text}` is not a number of processes (1 or more) or `auto`.")
    return int(text)


def cmd_run(args: argparse.Namespace) -> int:
    workers = _worker_count(args.workers)
    cfg = load(args.config)
    level = getattr(logging, args.log_level.upper())
    if args.worker_index is not None:
        accesslog.setup(args.log_format, level, shared=True, tag=f"worker {args.worker_index}: ")
        host, port = parse_listen(args.listen)
        link = WorkerLink(args.worker_index, args.worker_fd)
        return _serve(pinned(cfg, args.worker_pin), host, port, args.loop, link)
    accesslog.setup(args.log_format, level, shared=workers > 1)
    host, port = cfg.listen_host, cfg.listen_port
    if args.listen:
        try:
            host, port = parse_listen(args.listen)
        except HostError as exc:
            raise UsageError(f"--listen: {exc}.") from None
    if not is_loopback(host) and cfg.proxy_auth is None:
        if not args.allow_open:
            raise UsageError(
                f"refusing to listen on {host} without proxy_auth: anyone who reaches an open authproxy "
                "spends your credentials; configure proxy_auth, listen on 127.0.0.1, or pass --allow-open."
            )
        print(
            f"warning: listening on {host} with no proxy authentication: anyone who can reach this "
            "port can spend every credential in the route table.",
            file=sys.stderr,
        )
    _check_admin(cfg, args.allow_open)
    for w in cfg.warnings:
        log.warning("%s", w.located())
    if workers > 1:
        from authproxy.run.supervisor import WorkerArgs, supervise  # not needed by a worker, nor by a single process

        return supervise(cfg, host, port, workers, WorkerArgs(args.config, args.log_format, args.log_level, args.loop))
    return _serve(cfg, host, port, args.loop)


def _check_admin(cfg: Config, allow_open: bool) -> None:
    """The `--listen` rule for the admin listener: beyond loopback it needs `admin.token`, or --allow-open."""
    if cfg.admin is None or cfg.admin_token is not None or is_loopback(cfg.admin[0]):
        return
    where = format_authority(*cfg.admin)
    if not allow_open:
        raise UsageError(
            f"refusing to run the admin listener on {where} without a token: anyone who reaches it reads the "
            "proxy's status and metrics; set `admin: {listen: ..., token: ${VAR}}`, bind it to 127.0.0.1, "
            "or pass --allow-open."
        )
    print(
        f"warning: no token guards the admin listener at {where}: anyone who can reach it reads the "
        "proxy's status and metrics.",
        file=sys.stderr,
    )


def _run_loop(main: Coroutine[Any, Any, int], loop: str, reuse_port: bool = False) -> int:
    """uvloop when it is installed (`auto`) or asked for, else asyncio's own loop.

    uvloop costs a quarter less CPU per request (bench/README.md, "The event loop");
    `--loop asyncio` keeps the standard library's. ``reuse_port``: a worker's
    loop, whose listener shares the port with the other workers'.
    """
    tune_malloc()
    if loop == "auto":
        loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    if loop == "asyncio":
        tune_asyncio_tls()
        if not reuse_port:
            return asyncio.run(main)
        with asyncio.Runner(loop_factory=reuse_port_loop(asyncio.SelectorEventLoop)) as runner:
            return runner.run(main)
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        main.close()
        raise UsageError("--loop uvloop needs the `fast` extra: pip install 'authproxy[fast]'.") from None
    if reuse_port:
        return int(uvloop.run(main, loop_factory=reuse_port_loop(uvloop.Loop)))
    return int(uvloop.run(main))


def _serve(cfg: Config, host: str, port: int, loop: str, link: WorkerLink | None = None) -> int:
    try:
        return _run_loop(serve(cfg, host, port, link), loop, reuse_port=link is not None)
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}.", file=sys.stderr)
        return 1
