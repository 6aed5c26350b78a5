#!/bin/sh
# authproxy as installed, as a peer of ../shared/bench/run_peers.py (its README, "Adding a proxy"):
#
#   export AUTHPROXY_EXE=$(python3 bench/installed.py | tail -n 1)   # the venv, made first (once per commit):
#                                   # the start is not timed out, and a commit during the run changes nothing
#   python3 ../shared/bench/run_peers.py --add-peer \
#     "authproxy=intercept:sh $PWD/bench/peers/installed_peer.sh {port} {ca_cert} {ca_key} {work} {http_port} {https_port}"
#
# Writes the routes.yaml the harness asks for (a bearer route per upstream port, the bench CA)
# and runs this checkout's venv's `authproxy run -c` on it with every default: one process,
# `--loop auto`, no PYTHONPATH (bench/installed.py).
set -eu
port=$1 ca_cert=$2 ca_key=$3 work=$4 http_port=$5 https_port=$6
bench=$(cd "$(dirname "$0")/.." && pwd)
exe=${AUTHPROXY_EXE:-$(cd "$bench" && python3 installed.py | tail -n 1)}
cat > "$work/routes.yaml" <<YAML
listen: 127.0.0.1:$port
state_dir: $work/authproxy-state
ca_cert: $ca_cert
ca_key: $ca_key
routes:
  - name: bench
    match: 127.0.0.1:$http_port
    auth: {type: bearer, token: test-token}
  - name: bench-tls
    match: 127.0.0.1:$https_port
    ca_file: $ca_cert
    auth: {type: bearer, token: test-token}
YAML
cd "$work"
PYTHONPATH='' exec "$exe" run -c "$work/routes.yaml"
