#!/usr/bin/env bash
# Load benchmark: a cached SSR page served by the `ssr` demo's CacheLayer
# vs the same page served by an nginx proxy_cache hit, in the same run,
# pinned the same way (server on CPU 0, wrk on CPU 1), at 50 connections.
#
#   bash benches/load.sh            # 3 alternating rounds of 10 s each
#   ROUNDS=5 SECS=15 bash benches/load.sh
#
# Needs wrk and nginx (installed with apt-get when missing). Traffic stays
# on 127.0.0.1. Every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-3}"
SECS="${SECS:-10}"
CONNS="${CONNS:-50}"
SSR_PORT="${SSR_PORT:-18080}"
NGINX_PORT="${NGINX_PORT:-18081}"
PAGE="${PAGE:-/posts/42}"

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk nginx >/dev/null
fi
cores=$(nproc)
server_cpu=0
client_cpu=$((cores > 1 ? 1 : 0))

cargo build --release --example ssr -q
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

PORT=$SSR_PORT taskset -c "$server_cpu" target/release/examples/ssr >"$work/ssr.log" 2>&1 &
ssr_pid=$!
pids+=($ssr_pid)

mkdir -p "$work/cache" "$work/logs"
# nginx's worker runs as an unprivileged user: let it reach its cache.
chmod 755 "$work" && chmod 777 "$work/cache"
cat >"$work/nginx.conf" <<CONF
worker_processes 1;
worker_cpu_affinity 1;
pid $work/nginx.pid;
error_log $work/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 100000;
  proxy_cache_path $work/cache keys_zone=pages:10m max_size=100m;
  upstream ssr { server 127.0.0.1:$SSR_PORT; keepalive 16; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://ssr;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache pages;
      proxy_cache_lock on;
      # The demo sends max-age=0 for browsers (its s-maxage is for shared
      # caches); store 200s for ten minutes, past the whole run.
      proxy_ignore_headers Cache-Control Expires;
      proxy_cache_valid 200 10m;
      add_header X-Cache-Status \$upstream_cache_status always;
    }
  }
}
CONF
taskset -c "$server_cpu" nginx -p "$work" -c "$work/nginx.conf" -g 'daemon off;' &
nginx_pid=$!
pids+=($nginx_pid)

for port in $SSR_PORT $NGINX_PORT; do
  for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port$PAGE" && break
    sleep 0.1
  done
done
# Warm both caches and show that each answer is a hit.
curl -s -o /dev/null "http://127.0.0.1:$SSR_PORT$PAGE"
echo "layer: $(curl -s -D - -o /dev/null "http://127.0.0.1:$SSR_PORT$PAGE" | grep -i '^cache-status' | tr -d '\r')"
curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT$PAGE"
echo "nginx: $(curl -s -D - -o /dev/null "http://127.0.0.1:$NGINX_PORT$PAGE" | grep -i '^x-cache-status' | tr -d '\r')"
echo "page bytes: layer $(curl -s "http://127.0.0.1:$SSR_PORT$PAGE" | wc -c), nginx $(curl -s "http://127.0.0.1:$NGINX_PORT$PAGE" | wc -c)"
status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NGINX_PORT$PAGE")
if [ "$status" != 200 ]; then
  echo "nginx answered $status:" >&2
  tail -3 "$work/logs/error.log" >&2
  exit 1
fi

nginx_worker=$(pgrep -P "$nginx_pid" | head -1)
tck=$(getconf CLK_TCK)
# CPU time (user + system) of a process, in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Runs wrk against a port; prints "requests/s CPU-µs-per-request" for the
# server process given, which the machine's other load does not inflate the
# way it does throughput.
rps() {
  local before after out
  before=$(ticks "$2")
  out=$(taskset -c "$client_cpu" wrk -t1 -c"$CONNS" -d"${SECS}s" "http://127.0.0.1:$1$PAGE")
  after=$(ticks "$2")
  echo "$out" | awk -v t=$((after - before)) -v hz="$tck" '
    / requests in / {n = $1}
    /Requests\/sec/ {r = $2}
    END {printf "%s %.1f", r, t / hz * 1e6 / n}'
}
demo_requests() {
  curl -s "http://127.0.0.1:$SSR_PORT/admin/stats" | awk '/^(hits|misses)/ {n += $2} END {print n}'
}
reached=0
printf '%-6s %12s %12s %8s %14s %14s\n' round layer-rps nginx-rps ratio layer-cpu-us nginx-cpu-us
for r in $(seq 1 "$ROUNDS"); do
  read -r a acpu <<<"$(rps "$SSR_PORT" "$ssr_pid")"
  before=$(demo_requests)
  read -r b bcpu <<<"$(rps "$NGINX_PORT" "$nginx_worker")"
  reached=$((reached + $(demo_requests) - before - 1))
  printf '%-6s %12s %12s %8s %14s %14s\n' "$r" "$a" "$b" \
    "$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", a / b}')" "$acpu" "$bcpu"
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
# nginx must have answered from its own cache, not by asking the demo.
echo "requests nginx sent to the demo during its runs: $reached"
echo "nginx after the runs: $(curl -s -D - -o /dev/null "http://127.0.0.1:$NGINX_PORT$PAGE" | grep -i '^x-cache-status' | tr -d '\r')"
