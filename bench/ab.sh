#!/usr/bin/env bash
# Interleaved A/B of two checkouts of authproxy: small GETs, plain and intercepted.
#
#   bash bench/ab.sh BEFORE_DIR AFTER_DIR [ROUNDS]
#
# Each round runs bench/run.py once from each checkout (direct, then that
# checkout's authproxy; `small` and `small_tls`, 1 s warm-up + 5 s), the order
# alternating every round (ABBA...) so that neither side always goes first. One
# line per run: side, round, req/s and proxy CPU ms per 1,000 requests for each
# scenario, and the load average when it ran. Make a checkout of an older commit
# with `git worktree add --detach DIR COMMIT`.
set -euo pipefail
A=$1; B=$2; R=${3:-3}
out=$(mktemp -d /tmp/authproxy-ab.XXXXXX)
chmod 755 "$out"  # nginx's workers read the files it serves from here
one() {  # side dir round
  local side=$1 dir=$2 i=$3
  (cd "$dir" && python3 bench/run.py --proxies authproxy --scenarios small,small_tls --extras none \
      --repeat 1 --duration 5 --warmup 1 --workdir "$out/$side$i" > "$out/$side$i.log" 2>&1)
  python3 - "$side" "$i" "$out/$side$i/results.json" <<'PY'
import json, sys
side, i, path = sys.argv[1:]
rows = [r for r in json.load(open(path))["results"] if r["target"] == "authproxy"]
print(side, i, " | ".join(
    f"{r['scenario']}: {r['rps']:.0f} req/s {r['cpu_ms_per_1k']:.1f} CPU ms/1k load1={r.get('load1')}" for r in rows),
    flush=True)
PY
}
for i in $(seq 1 "$R"); do
  if [ $((i % 2)) = 1 ]; then one before "$A" "$i"; one after "$B" "$i"
  else one after "$B" "$i"; one before "$A" "$i"; fi
done
echo "logs and results.json: $out"
