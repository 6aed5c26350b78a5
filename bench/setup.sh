#!/usr/bin/env bash
# Installs what bench/run.py needs (Debian 12): nginx-light (the upstream, plain and TLS),
# wrk (plain-HTTP load, and the direct TLS reference), hey (HTTPS load through an intercepted
# CONNECT: wrk cannot CONNECT), curl (the 100 MB downloads and the checks), openssl (the bench
# CA and nginx's certificate). Idempotent: skips apt when all are present.
# Peers (mitmproxy, squid, ...) are not installed here yet; see ../shared/bench/ for those.
# The proxy itself is the project, installed in editable mode (pip install -e .).
# Note: on a machine with systemd, installing nginx-light starts its system service on
# port 80; the bench does not use that instance and starts its own on 127.0.0.1.
set -euo pipefail

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v hey >/dev/null 2>&1 || need+=(hey)
command -v openssl >/dev/null 2>&1 || need+=(openssl)

if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing: ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
else
    echo "nginx, wrk, hey, curl and openssl already installed"
fi

# nginx -v prints to stderr; wrk -v exits 1.
nginx -v 2>&1
wrk -v 2>&1 | head -1 || true
curl --version | head -1
echo "hey $(dpkg-query -W -f '${Version}' hey 2>/dev/null || echo '(not from apt)')"
openssl version
python3 -c 'import authproxy, sys; print("authproxy", authproxy.__version__, "on python", sys.version.split()[0])' \
    || echo "warning: authproxy is not importable by python3; run 'pip install -e .' in the project" >&2
