#!/usr/bin/env bash
# Installs what bench/run.py needs (Debian 12). Idempotent: each step is skipped when its result
# is already there.
#
#   apt:  nginx-light (the upstream, plain and TLS, and the token endpoint), wrk (plain-HTTP load,
#         the scaling curve, the direct TLS reference), hey (HTTPS load through a CONNECT: wrk
#         cannot CONNECT), curl (downloads, checks, cold starts), openssl (the bench CA),
#         squid-openssl (squid with ssl-bump) and tinyproxy (peers).
#   pip:  the two Python peers, each in its own venv under $BENCH_VENVS (default /tmp), so the
#         system Python and the project's environment are left alone:
#           $BENCH_VENVS/authproxy-bench-mitmproxy   mitmproxy (mitmdump)
#           $BENCH_VENVS/authproxy-bench-proxypy     proxy.py
#
# The proxy under test is this checkout: run.py starts `python -m authproxy` with the project
# root first on PYTHONPATH, so it needs the project's dependencies (pip install -e .).
# The peers are optional: run.py reports a missing one as "not installed". `--no-peers` installs
# only what direct-vs-authproxy needs.
# Note: on a machine where apt starts services (systemd, no policy-rc.d), installing nginx-light,
# squid-openssl and tinyproxy starts their system instances (ports 80, 3128, 8888); the bench
# does not use them, it starts its own on 127.0.0.1 with its own configs.
set -euo pipefail

MITMPROXY_VERSION=${MITMPROXY_VERSION:-11.0.2}
PROXYPY_VERSION=${PROXYPY_VERSION:-2.4.10}
VENVS=${BENCH_VENVS:-/tmp}
PEERS=1
[ "${1:-}" = "--no-peers" ] && PEERS=0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have nginx || need+=(nginx-light)
have wrk || need+=(wrk)
have curl || need+=(curl)
have hey || need+=(hey)
have openssl || need+=(openssl)
if [ "$PEERS" = 1 ]; then
    # squid-openssl, not squid: only that build has ssl-bump and security_file_certgen.
    [ -x /usr/lib/squid/security_file_certgen ] || need+=(squid-openssl)
    have tinyproxy || need+=(tinyproxy)
fi

if [ ${#need[@]} -gt 0 ]; then
    echo "apt-get install: ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
else
    echo "apt packages already installed"
fi

venv() {  # venv NAME PACKAGE==VERSION EXECUTABLE
    local dir="$VENVS/$1"
    if [ -x "$dir/bin/$3" ]; then
        echo "$2: already in $dir"
        return
    fi
    echo "$2: installing into $dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check "$2"
}
if [ "$PEERS" = 1 ]; then
    venv authproxy-bench-mitmproxy "mitmproxy==$MITMPROXY_VERSION" mitmdump
    venv authproxy-bench-proxypy "proxy.py==$PROXYPY_VERSION" proxy
fi

# matplotlib for bench/plot.py (the scaling curve as a PNG), into the Python that runs the bench.
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check 'matplotlib>=3.6'

# What is installed (run.py prints the same facts into its report). nginx -v prints to stderr;
# wrk -v exits 1.
set +o pipefail
nginx -v 2>&1
wrk -v 2>&1 | head -1
curl --version | head -1
echo "hey $(dpkg-query -W -f '${Version}' hey 2>/dev/null || echo '(not from apt)')"
openssl version
if [ "$PEERS" = 1 ]; then
    squid -v | head -1
    tinyproxy -v 2>&1 | head -1
    "$VENVS/authproxy-bench-mitmproxy/bin/mitmdump" --version 2>&1 | head -1
    echo "proxy.py $("$VENVS/authproxy-bench-proxypy/bin/proxy" --version 2>&1 | tail -1)"
fi
python3 -c 'import authproxy, sys; print("authproxy", authproxy.__version__, "on python", sys.version.split()[0])' \
    || echo "warning: authproxy is not importable by python3; run 'pip install -e .' in the project" >&2
