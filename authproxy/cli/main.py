"""The ``authproxy`` command: run, check, token. Exit 0 ok, 2 usage/config, 1 anything else.

This module holds the arguments and the dispatch; the commands live by group:
``runcmd`` (run), ``report`` (check, token, status), ``prepare``
(hash-password, login, ca, env).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from authproxy import __version__
from authproxy.cli.envvars import DEFAULT_NO_PROXY
from authproxy.cli.prepare import cmd_ca, cmd_env, cmd_hash_password, cmd_login
from authproxy.cli.report import cmd_check, cmd_status, cmd_token
from authproxy.cli.runcmd import cmd_run
from authproxy.cli.usage import reported
from authproxy.compiled import describe


def _parser() -> argparse.ArgumentParser:
    """Every command and option; longer than a screen as argparse declarations only, no logic."""
    p = argparse.ArgumentParser(
        prog="authproxy",
        description="A forward HTTP(S) proxy that adds credentials to outbound requests.",
    )
    p.add_argument("--version", action="version", version=f"authproxy {__version__} ({describe()})")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the proxy")
    run.add_argument("-c", "--config", default="routes.yaml", help="route table (default ./routes.yaml)")
    run.add_argument("--listen", help="HOST:PORT to listen on (default from the file, else 127.0.0.1:8080)")
    run.add_argument("--log-format", choices=("text", "json"), default="text")
    run.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop; auto: uvloop where installed (by default on Linux and macOS), else asyncio's",
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
    env.add_argument(
        "--placeholders",
        action="store_true",
        help="also print each route's placeholder as its `placeholder_env` variable (what a sandboxed workload holds)",
    )

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
    return reported(lambda: _dispatch(args))


def _dispatch(args: argparse.Namespace) -> int:
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
        return cmd_env(args.config, args.shell, args.no_proxy, args.listen, args.placeholders)
    return cmd_run(args)
