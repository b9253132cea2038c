#!/usr/bin/env bash
# Runs the examples the way README.md and the issues tell a user to, on
# loopback ports, and checks what they answer. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }
cargo build --quiet --examples
ex=target/debug/examples
logs=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$logs"
}
trap cleanup EXIT

fail() { echo "smoke: FAIL: $*" >&2; exit 1; }
ok() { echo "smoke: ok: $*"; }

# start NAME CMD...: runs CMD in the background, waits for its
# "listening on ADDR" line and sets ADDR (host:port, without http://).
start() {
  local name=$1; shift
  "$@" >"$logs/$name.log" 2>&1 &
  pids+=($!)
  LAST_PID=$!
  for _ in $(seq 1 200); do
    if grep -q "listening on" "$logs/$name.log"; then
      ADDR=$(grep -m1 "listening on" "$logs/$name.log" | sed -E 's#.*listening on (http://)?##')
      return 0
    fi
    kill -0 "$LAST_PID" 2>/dev/null || { cat "$logs/$name.log" >&2; fail "$name exited early"; }
    sleep 0.1
  done
  cat "$logs/$name.log" >&2
  fail "$name never said 'listening on'"
}

# header URL NAME [curl args...]: the value of one response header.
header() {
  local url=$1 name=$2; shift 2
  curl -s -o /dev/null -D - "$@" "$url" | tr -d '\r' | grep -i "^$name:" | head -1 | cut -d' ' -f2-
}
status() {
  local url=$1; shift
  curl -s -o /dev/null -w '%{http_code}' "$@" "$url"
}
expect() { # expect WHAT GOT WANT-REGEX
  [[ "$2" =~ $3 ]] || fail "$1: got '$2', want /$3/"
  ok "$1"
}

# ---- the ssr demo: `cargo run --example ssr` (PORT overrides 3000) -------
start ssr env PORT=0 METRICS_PORT=0 "$ex/ssr"
base="http://$ADDR"
# environ PID: the process's environment, one variable per line.
environ() { tr '\0' '\n' <"/proc/$1/environ"; }
# Under glibc the caching examples restart themselves with a fixed mmap
# threshold (examples/support/malloc.rs); an operator's own value stands.
glibc=0
# Not `ldd | grep -q`: grep quits at the first match, and under pipefail
# ldd's broken pipe would read as "not glibc".
libc=$(ldd --version 2>&1 || true)
grep -qiE 'glibc|gnu libc' <<<"$libc" && glibc=1
if [ "$glibc" = 1 ]; then
  environ "$LAST_PID" | grep -qx 'MALLOC_MMAP_THRESHOLD_=65536' || fail "ssr runs without MALLOC_MMAP_THRESHOLD_=65536"
  ok "ssr restarted itself with MALLOC_MMAP_THRESHOLD_=65536"
fi
expect "ssr page policy" "$(header "$base/posts/1" cache-control)" '^public, max-age=0, s-maxage=60, stale-while-revalidate=300$'
expect "ssr second request is a hit" "$(header "$base/posts/1" cache-status)" '^tower-ssr; hit; ttl=[0-9]+$'
expect "ssr hit carries Age" "$(header "$base/posts/1" age)" '^[0-9]+$'
expect "ssr hit has Server-Timing" "$(header "$base/posts/1" server-timing)" '^cache;desc=hit$'
ssr_metrics=$(grep -m1 "metrics at" "$logs/ssr.log" | sed -E 's#.*metrics at ##')
expect "ssr serves /metrics" "$(curl -s "$ssr_metrics")" 'tower_ssr_cache_requests_total\{cache="tower-ssr",outcome="hit"\} [1-9]'
etag=$(header "$base/posts/1" etag)
expect "ssr weak ETag" "$etag" '^W/"[0-9a-f]{32}"$'
expect "ssr If-None-Match gives 304" "$(status "$base/posts/1" -H "If-None-Match: $etag")" '^304$'
expect "ssr asset is immutable" "$(header "$base/assets/app.3f9a1c.js" cache-control)" '^public, max-age=31536000, immutable$'
expect "ssr account is private" "$(header "$base/account" cache-control)" '^private'
expect "ssr account is never a hit" "$(header "$base/account" cache-status)" 'fwd='
expect "ssr boom is a 500" "$(status "$base/boom")" '^500$'
expect "ssr boom is no-store" "$(header "$base/boom" cache-control)" '^no-store$'
expect "ssr purge answers" "$(status "$base/admin/purge?path=/posts/1" -X POST)" '^200$'
expect "ssr purged page is a miss" "$(header "$base/posts/1" cache-status)" 'fwd=uri-miss'
kill -INT "$LAST_PID"
for _ in $(seq 1 50); do kill -0 "$LAST_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$LAST_PID" 2>/dev/null && fail "ssr did not stop on Ctrl-C"
ok "ssr stops on Ctrl-C"

# ---- one example per task (issue 13) --------------------------------------
for app in axum_app hyper_app; do
  start "$app" env PORT=0 "$ex/$app"
  base="http://$ADDR"
  expect "$app first request is stored" "$(header "$base/" cache-status -H 'Accept-Encoding: gzip')" 'fwd=uri-miss; stored'
  expect "$app second request is a hit" "$(header "$base/" cache-status -H 'Accept-Encoding: gzip')" '^tower-ssr; hit'
  expect "$app compresses" "$(header "$base/" content-encoding -H 'Accept-Encoding: gzip')" '^gzip$'
  kill -INT "$LAST_PID"
  for _ in $(seq 1 50); do kill -0 "$LAST_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$LAST_PID" 2>/dev/null && fail "$app did not stop on Ctrl-C"
  ok "$app stops on Ctrl-C"
done
"$ex/balance_in_process" >"$logs/balance_in_process.log" 2>&1 || { cat "$logs/balance_in_process.log" >&2; fail "balance_in_process"; }
ok "balance_in_process"
"$ex/purge_and_revalidate" >"$logs/purge.log" 2>&1 || { cat "$logs/purge.log" >&2; fail "purge_and_revalidate"; }
ok "purge_and_revalidate"

# ---- the proxy, with exactly the issue's command line shape ---------------
start r1 "$ex/renderer" --listen 127.0.0.1:0 --name r1
up1=$ADDR
start r2 "$ex/renderer" --listen 127.0.0.1:0 --name r2
up2=$ADDR
start proxy "$ex/proxy" --listen 127.0.0.1:0 --upstream "http://$up1" --upstream "http://$up2" \
  --strategy round-robin --weights 1,2 --cache-mb 64
proxy_pid=$LAST_PID
base="http://$ADDR"
if [ "$glibc" = 1 ]; then
  environ "$proxy_pid" | grep -qx 'MALLOC_MMAP_THRESHOLD_=65536' || fail "proxy runs without MALLOC_MMAP_THRESHOLD_=65536"
  ok "proxy restarted itself with MALLOC_MMAP_THRESHOLD_=65536 (same process)"
fi
expect "proxy first request is stored" "$(header "$base/p/1" cache-status)" 'fwd=uri-miss; stored'
expect "proxy second request is a hit" "$(header "$base/p/1" cache-status)" '^tower-ssr; hit'
kill -TERM "$proxy_pid"
for _ in $(seq 1 100); do kill -0 "$proxy_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$proxy_pid" 2>/dev/null && fail "proxy did not stop on SIGTERM"
ok "proxy stops on SIGTERM"

start proxy2 env MALLOC_MMAP_THRESHOLD_=131072 "$ex/proxy" --listen 127.0.0.1:0 --upstream "http://$up1" --upstream "http://$up2" \
  --strategy round-robin --no-cache
base="http://$ADDR"
if [ "$glibc" = 1 ]; then
  environ "$LAST_PID" | grep -qx 'MALLOC_MMAP_THRESHOLD_=131072' || fail "proxy overrode the operator's MALLOC_MMAP_THRESHOLD_"
  ok "proxy keeps the operator's MALLOC_MMAP_THRESHOLD_"
fi
expect "proxy --no-cache adds no Cache-Status" "$(header "$base/p/1" cache-status)" '^$'
a=$(header "$base/p/2" x-upstream); b=$(header "$base/p/2" x-upstream)
[[ -n "$a" && -n "$b" && "$a" != "$b" ]] || fail "round robin: got '$a' then '$b'"
ok "proxy round robin alternates upstreams"
# ---- the proxy's Prometheus endpoint: `--metrics ADDR` -------------------
start proxy3 "$ex/proxy" --listen 127.0.0.1:0 --upstream "http://$up1" --upstream "http://$up2" \
  --metrics 127.0.0.1:0
base="http://$ADDR"
metrics_url=$(grep -m1 "metrics at" "$logs/proxy3.log" | sed -E 's#.*metrics at ##')
expect "proxy --metrics prints its URL" "$metrics_url" '^http://127\.0\.0\.1:[0-9]+/metrics$'
expect "proxy forwarded answer has Server-Timing" "$(header "$base/m/1" server-timing)" '^cache;desc=miss, upstream;dur=[0-9]+\.[0-9]$'
expect "proxy hit has Server-Timing" "$(header "$base/m/1" server-timing)" '^cache;desc=hit$'
header "$base/m/2" cache-status >/dev/null
scrape=$(curl -s "$metrics_url")
for want in \
  'tower_ssr_cache_requests_total\{cache="tower-ssr",outcome="hit"\} 1' \
  'tower_ssr_cache_requests_total\{cache="tower-ssr",outcome="miss"\} 2' \
  'tower_ssr_cache_stores_total\{cache="tower-ssr"\} 2' \
  'tower_ssr_cache_bytes\{cache="tower-ssr"\} [0-9]' \
  'tower_ssr_upstream_requests_total\{endpoint="http://[0-9.:]+/?",status_class="2xx"\} [12]' \
  'tower_ssr_upstream_request_duration_seconds_bucket\{endpoint="http://[0-9.:]+/?",le="0.1"\} [12]' \
  'tower_ssr_upstream_in_flight\{endpoint="http://[0-9.:]+/?"\} 0' \
  'tower_ssr_upstream_healthy\{endpoint="http://[0-9.:]+/?"\} 1'; do
  [[ "$scrape" =~ $want ]] || { echo "$scrape" >&2; fail "scrape lacks /$want/"; }
done
ok "proxy --metrics scrape has the cache and upstream series"
expect "proxy metrics port answers 404 elsewhere" "$(status "${metrics_url%/metrics}/")" '^404$'

expect "proxy rejects bad flags" "$("$ex/proxy" --listen 127.0.0.1:0 --upstream "http://$up1" --strategy nope >/dev/null 2>&1; echo $?)" '^2$'

# ---- two ssr instances sharing one Redis (when CI started one) ----------
if [[ -n "${TOWER_SSR_REDIS_URL:-}" ]]; then
  cargo build --quiet --example ssr --features redis
  start ssr_a env PORT=0 METRICS_PORT=0 REDIS_URL="$TOWER_SSR_REDIS_URL" "$ex/ssr"
  a="http://$ADDR"
  start ssr_b env PORT=0 METRICS_PORT=0 REDIS_URL="$TOWER_SSR_REDIS_URL" "$ex/ssr"
  b="http://$ADDR"
  host=(-H "Host: smoke-$$.local")
  expect "redis: instance A renders and stores" "$(header "$a/posts/7" cache-status "${host[@]}")" 'fwd=uri-miss; stored'
  # The write to Redis lands just after the response; give it a moment.
  for _ in $(seq 1 50); do
    got=$(header "$b/posts/7" cache-status "${host[@]}")
    [[ "$got" =~ detail=redis ]] && break
    sleep 0.1
  done
  expect "redis: instance B hits what A rendered" "$got" '^tower-ssr; hit; .*detail=redis'
  expect "redis: purge on B answers" "$(status "$b/admin/purge?path=/posts/7" -X POST "${host[@]}")" '^200$'
  for _ in $(seq 1 50); do
    got=$(header "$a/posts/7" cache-status "${host[@]}")
    [[ "$got" =~ fwd= ]] && break
    sleep 0.1
  done
  expect "redis: the purge reached A" "$got" 'fwd='
else
  echo "smoke: skipped the two-instance Redis check: TOWER_SSR_REDIS_URL is not set"
fi

# ---- two ssr instances on a Redis Cluster of three masters --------------
# Started here (redis-server --cluster-enabled yes ×3, redis-cli --cluster
# create) when both tools are on PATH, as .ci/run makes sure; stopped on
# exit with everything else.
free_cluster_port() { # a port nothing answers on, nor on its bus port (+10000)
  local p
  while :; do
    p=$((20000 + RANDOM % 35000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
    (exec 3<>"/dev/tcp/127.0.0.1/$((p + 10000))") 2>/dev/null && continue
    echo "$p"
    return
  done
}
if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
  cargo build --quiet --example ssr --features redis
  mkdir -p "$logs/cluster"
  cluster_ports=()
  for _ in 1 2 3; do
    p=$(free_cluster_port)
    redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no \
      --cluster-enabled yes --cluster-config-file "nodes-$p.conf" \
      --cluster-node-timeout 5000 --dir "$logs/cluster" >"$logs/redis-$p.log" 2>&1 &
    pids+=($!)
    cluster_ports+=("$p")
  done
  for p in "${cluster_ports[@]}"; do
    for _ in $(seq 1 100); do
      redis-cli -p "$p" ping 2>/dev/null | grep -q PONG && break
      sleep 0.1
    done
  done
  redis-cli --cluster create "${cluster_ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes \
    >"$logs/cluster-create.log" 2>&1 || { cat "$logs/cluster-create.log" >&2; fail "redis-cli --cluster create"; }
  for _ in $(seq 1 200); do
    ok_nodes=0
    for p in "${cluster_ports[@]}"; do
      redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && ok_nodes=$((ok_nodes + 1))
    done
    [[ $ok_nodes == 3 ]] && break
    sleep 0.1
  done
  expect "cluster: three masters say cluster_state:ok" "$ok_nodes" '^3$'
  seeds=$(printf 'redis://127.0.0.1:%s,' "${cluster_ports[@]}")
  seeds=${seeds%,}
  start ssr_ca env PORT=0 METRICS_PORT=0 REDIS_CLUSTER="$seeds" "$ex/ssr"
  a="http://$ADDR"
  start ssr_cb env PORT=0 METRICS_PORT=0 REDIS_CLUSTER="$seeds" "$ex/ssr"
  b="http://$ADDR"
  host=(-H "Host: smoke-cluster-$$.local")
  expect "cluster: instance A renders and stores" "$(header "$a/posts/7" cache-status "${host[@]}")" 'fwd=uri-miss; stored'
  for _ in $(seq 1 50); do
    got=$(header "$b/posts/7" cache-status "${host[@]}")
    [[ "$got" =~ detail=redis ]] && break
    sleep 0.1
  done
  expect "cluster: instance B hits what A rendered" "$got" '^tower-ssr; hit; .*detail=redis'
  expect "cluster: B's next answer is from its memory" "$(header "$b/posts/7" cache-status "${host[@]}")" '^tower-ssr; hit; ttl=[0-9]+$'
  entries=0
  for p in "${cluster_ports[@]}"; do
    n=$(redis-cli -p "$p" --scan --pattern '{tower-ssr:*}:e:*smoke-cluster-*' | wc -l)
    entries=$((entries + n))
  done
  expect "cluster: the page is one hash-tagged entry on the masters" "$entries" '^1$'
  expect "cluster: purge on B answers" "$(status "$b/admin/purge?path=/posts/7" -X POST "${host[@]}")" '^200$'
  for _ in $(seq 1 50); do
    got=$(header "$a/posts/7" cache-status "${host[@]}")
    [[ "$got" =~ fwd= ]] && break
    sleep 0.1
  done
  expect "cluster: the purge reached A" "$got" 'fwd='
  # A rendered it again; B gets it through Redis, then from memory.
  for _ in $(seq 1 50); do
    got=$(header "$b/posts/7" cache-status "${host[@]}")
    [[ "$got" =~ detail=redis ]] && break
    sleep 0.1
  done
  expect "cluster: B hits A's new render" "$got" 'detail=redis'
  expect "cluster: revalidate on A answers" "$(status "$a/admin/revalidate?tag=pages" -X POST "${host[@]}")" '^200$'
  # B's memory copy is marked stale: the next answer is that copy, at once
  # (ttl 0 or below), while one refresh runs.
  for _ in $(seq 1 50); do
    got=$(header "$b/posts/7" cache-status "${host[@]}")
    [[ "$got" =~ ttl=(0|-[0-9]+)$ ]] && break
    sleep 0.1
  done
  expect "cluster: the revalidation reached B (stale copy served)" "$got" '^tower-ssr; hit; ttl=(0|-[0-9]+)$'
else
  echo "smoke: skipped the Redis Cluster check: needs redis-server and redis-cli on PATH"
fi

echo "smoke: all examples answered as documented"
