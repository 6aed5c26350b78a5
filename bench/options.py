"""The command line: parse_args and its checks."""

from __future__ import annotations

import argparse
import sys

from constants import VENVS
from targets import AUTHPROXY, EXTRAS, PROXIES, SCENARIOS


def parse_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """run.py's arguments, checked, with the lists they name; `description` heads --help (run.py's docstring)."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(ap)
    add_setup_options(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.repeat, args.duration, args.warmup = 1, 3, 1
    if min(args.repeat, args.duration, args.connections, args.wide_connections, args.threads) < 1 or args.warmup < 0:
        ap.error("--repeat, --duration, --connections, --wide-connections and --threads must be >= 1")
    args.proxy_list = choose(ap, args.proxies, PROXIES, "--proxies", ("direct",))
    args.scenario_list = choose(ap, args.scenarios, tuple(SCENARIOS), "--scenarios")
    args.extra_list = choose(ap, args.extras, EXTRAS, "--extras")
    if not args.scenario_list:
        ap.error("--scenarios: none given")
    try:
        args.scaling_list = sorted({int(c) for c in args.scaling_levels.split(",") if c.strip()})
    except ValueError:
        ap.error("--scaling-levels: comma-separated connection counts")
    if AUTHPROXY not in args.proxy_list:
        args.extra_list = []
    if args.refresh_runs < 1 or not 1 <= args.refresh_revoke_at <= args.refresh_duration - 1:
        ap.error("--refresh-runs must be >= 1, --refresh-revoke-at at least 1 s from the start and the end of the load")
    args.authproxy_workers_list = workers(ap, args.authproxy_workers, "--authproxy-workers")
    if args.extras_workers == "all":
        args.extras_workers_list = args.authproxy_workers_list
    else:
        args.extras_workers_list = workers(ap, args.extras_workers, "--extras-workers")
        stray = [w for w in args.extras_workers_list if w not in args.authproxy_workers_list]
        if stray:
            ap.error(f"--extras-workers: {', '.join(stray)} is not in --authproxy-workers")
    return args


def add_run_options(ap: argparse.ArgumentParser) -> None:
    """What runs and for how long: rounds, targets, scenarios, extras, connections, the extras' sizes."""
    ap.add_argument("--repeat", type=int, default=3, help="rounds, every target interleaved in each; default 3")
    ap.add_argument("--duration", type=int, default=10, help="seconds of measured load per run; default 10")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each run")
    ap.add_argument("--quick", action="store_true", help="a fast check: --repeat 1 --duration 3 --warmup 1")
    ap.add_argument(
        "--proxies",
        default="all",
        help=f"comma-separated, from {', '.join(PROXIES)}; 'all' (default): every one, a peer that is not "
        "installed is reported as such; 'none': direct only. direct always runs",
    )
    ap.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, from {', '.join(SCENARIOS)}; default: all of them",
    )
    ap.add_argument(
        "--extras",
        default=",".join(EXTRAS),
        help=f"authproxy-only runs after the rounds, comma-separated from {', '.join(EXTRAS)}, or 'none'",
    )
    ap.add_argument("--connections", type=int, default=64, help="wrk and hey connections; default 64")
    ap.add_argument("--wide-connections", type=int, default=256, help="wrk connections of small_wide; default 256")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads; default 1 (a 2-core machine)")
    ap.add_argument("--scaling-levels", default="1,16,64,256,1024", help="connections of the scaling curve")
    ap.add_argument("--idle-conns", type=int, default=1000, help="idle keep-alive connections opened; default 1000")
    ap.add_argument("--cold-runs", type=int, default=5, help="cold starts with a token fetch; default 5")
    ap.add_argument("--refresh-runs", type=int, default=3, help="forced refreshes under load (refresh); default 3")
    ap.add_argument("--refresh-duration", type=int, default=6, help="seconds of load per refresh run; default 6")
    ap.add_argument(
        "--refresh-revoke-at", type=float, default=3.0, help="the upstream revokes the token after this many s; 3"
    )
    ap.add_argument(
        "--refresh-delay-ms", type=float, default=50.0, help="the refresh token endpoint's delay per fetch; default 50"
    )


def add_setup_options(ap: argparse.ArgumentParser) -> None:
    """Where and with what: the workdir, ports, nginx, the interpreter, authproxy's variants, the peers."""
    ap.add_argument("--workdir", default="/tmp/authproxy-bench-project", help="configs, files, logs, results")
    ap.add_argument("--upstream-port", type=int, default=0, help="nginx port on 127.0.0.1; default: free")
    ap.add_argument(
        "--https-port",
        type=int,
        default=None,
        help="nginx TLS port on 127.0.0.1; default 443 as root (hey puts Host's port into the TLS SNI), else free",
    )
    ap.add_argument("--proxy-port", type=int, default=0, help="authproxy port on 127.0.0.1; default: free")
    ap.add_argument("--nginx-workers", type=int, default=1, help="nginx worker_processes; default 1")
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs `-m authproxy`")
    ap.add_argument(
        "--authproxy-workers",
        default="1",
        metavar="N|auto[,...]",
        help="authproxy run --workers: N processes on one port (SO_REUSEPORT), or auto (one per CPU); default 1, "
        "a single process. Comma-separated (1,2): each value is a target of its own, side by side in every table",
    )
    ap.add_argument(
        "--extras-workers",
        default="all",
        metavar="N|auto[,...]|all",
        help="which --authproxy-workers variants run the extras (cold, scaling, idle, refresh); default all of them",
    )
    ap.add_argument(
        "--installed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the `authproxy-installed` target, the first authproxy row: this checkout installed by "
        "`pip install .` into a venv of its own (made once per commit, bench/installed.py), run with every "
        "default; --no-installed leaves it out",
    )
    ap.add_argument(
        "--authproxy-loop",
        default="asyncio",
        choices=("asyncio", "uvloop"),
        help="authproxy run --loop: the event loop (uvloop: the default on Linux and macOS)",
    )
    ap.add_argument(
        "--proxy-log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="authproxy --log-level; info (the default) writes one access line per request",
    )
    ap.add_argument("--mitmdump", default=str(VENVS / "authproxy-bench-mitmproxy/bin/mitmdump"))
    ap.add_argument("--proxypy", default=str(VENVS / "authproxy-bench-proxypy/bin/proxy"))
    ap.add_argument("--download-timeout", type=int, default=60, help="curl --max-time for the 100 MB GET; default 60")
    ap.add_argument("--out", help="also write the markdown report here")


def choose(
    ap: argparse.ArgumentParser, value: str, allowed: tuple[str, ...], flag: str, extra: tuple[str, ...] = ()
) -> list[str]:
    """The names a comma-separated option chose (`all`, `none`, or some of `allowed`), in `allowed`'s order."""
    if value.strip() == "all":
        return list(allowed)
    if value.strip() == "none":
        return []
    chosen = [s.strip() for s in value.split(",") if s.strip() and s.strip() not in extra]
    unknown = [s for s in chosen if s not in allowed]
    if unknown:
        ap.error(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return [s for s in allowed if s in chosen]  # always in the canonical order


def workers(ap: argparse.ArgumentParser, value: str, flag: str) -> list[str]:
    """`1,2` / `1,auto`: each a number of processes (1 or more) or `auto`; `2` and `02` are one."""
    out: list[str] = []
    for w in (w.strip() for w in value.split(",")):
        if w != "auto" and not (w.isdigit() and int(w) >= 1):
            ap.error(f"{flag}: comma-separated numbers of processes (1 or more) or `auto`, got {value!r}")
        w = w if w == "auto" else str(int(w))
        out += [] if w in out else [w]
    return out
