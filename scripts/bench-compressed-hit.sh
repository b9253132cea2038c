#!/usr/bin/env bash
# Issue 9: a compressed cache hit. examples/proxy (its cache stores br,
# zstd and gzip once, at store time) beside nginx `proxy_cache` + `gzip on;
# gzip_comp_level 1` (nginx stores identity and compresses every hit), in
# front of the same renderer serving the same 30 KB page, asked with
# Chrome's `Accept-Encoding: gzip, deflate, br, zstd`; alternating rounds
# in one run. Then the bytes each sends: ours per coding against nginx at
# `gzip_comp_level 6`, for the renderer's page and for the `ssr` demo's
# `/posts/1`. Only 127.0.0.1, fixed ports in 27300-27399 (BASE_PORT).
#
#   bash scripts/bench-compressed-hit.sh            # 5 rounds of 10 s each
#   ROUNDS=7 DURATION=5s bash scripts/bench-compressed-hit.sh
#   IDENTITY=1 bash scripts/bench-compressed-hit.sh  # also an identity hit of ours per round
#
# Needs nginx and wrk. Pinning: both servers on CPU 0 (one nginx worker,
# one tower-ssr runtime thread), renderer and wrk on CPU 1. Besides req/s
# it reports each server's CPU time per request (from /proc), which stays
# meaningful when wrk, not the server, limits req/s.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
BYTES=${BYTES:-30000}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BASE_PORT=${BASE_PORT:-27300}
AE='gzip, deflate, br, zstd'
UP=127.0.0.1:$((BASE_PORT + 1))
SSR_PORT=$((BASE_PORT + 2))
OURS=127.0.0.1:$((BASE_PORT + 80))
NGINX1=127.0.0.1:$((BASE_PORT + 81))
NGINX6=127.0.0.1:$((BASE_PORT + 82))
NGINX6_SSR=127.0.0.1:$((BASE_PORT + 83))

command -v nginx >/dev/null && command -v wrk >/dev/null || {
  echo "needs nginx and wrk: apt-get install -y nginx wrk" >&2; exit 1; }

cargo build --release --example proxy --example renderer --example ssr >&2
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -f "$work/nginx.pid" ]; then kill "$(cat "$work/nginx.pid")" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # wait_for FILE: until a process printed "listening on"
  for _ in $(seq 1 100); do grep -q "listening on" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for $1" >&2; cat "$1" >&2; exit 1
}

taskset -c "$LOAD_CPU" target/release/examples/renderer --listen "$UP" --bytes "$BYTES" \
  >"$work/renderer.log" 2>&1 &
pids+=($!)
wait_for "$work/renderer.log"

taskset -c "$SERVER_CPU" target/release/examples/proxy --listen "$OURS" --upstream "http://$UP" \
  --threads 1 >"$work/proxy.log" 2>&1 &
ours_pid=$!
pids+=($ours_pid)
wait_for "$work/proxy.log"

PORT=$SSR_PORT METRICS_PORT=$((BASE_PORT + 90)) RUST_LOG=off target/release/examples/ssr \
  >"$work/ssr.log" 2>&1 &
pids+=($!)
wait_for "$work/ssr.log"

# nginx asks the renderer for identity (as the cache does) and gzips each
# answer: level 1 for the load, level 6 (nginx's common setting) for sizes.
cat >"$work/nginx.conf" <<CONF
user root;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/body;
  proxy_temp_path $work/proxy;
  proxy_cache_path $work/cache levels=1:2 keys_zone=pages:10m max_size=256m;
  upstream renderer { server $UP; keepalive 64; }
  gzip on;
  gzip_proxied any;
  gzip_vary on;
  gzip_min_length 1024;
  server {
    listen $NGINX1;
    gzip_comp_level 1;
    location / {
      proxy_pass http://renderer;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Accept-Encoding "";
      proxy_cache pages;
      proxy_cache_valid 200 60s;
      add_header X-Cache-Status \$upstream_cache_status;
    }
  }
  server {
    listen $NGINX6;
    gzip_comp_level 6;
    location / {
      proxy_pass http://renderer;
      proxy_set_header Accept-Encoding "";
    }
  }
  server {
    listen $NGINX6_SSR;
    gzip_comp_level 6;
    location / {
      proxy_pass http://127.0.0.1:$SSR_PORT;
      proxy_set_header Accept-Encoding "";
    }
  }
}
CONF
taskset -c "$SERVER_CPU" nginx -c "$work/nginx.conf" -p "$work"
for _ in $(seq 1 50); do [ -s "$work/nginx.pid" ] && break; sleep 0.1; done

# Until URL answers with Content-Encoding CODING (the cache makes its
# codings off the request path, a moment after the first store).
until_coded() { # until_coded URL CODING [curl args...]
  local url=$1 coding=$2; shift 2
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null -D - -H "Accept-Encoding: $coding" "$@" "$url" \
      | grep -qi "^content-encoding: $coding" && return 0
    sleep 0.05
  done
  echo "$url never answered in $coding" >&2; exit 1
}
until_coded "http://$OURS/page" br
until_coded "http://$NGINX1/page" gzip
until_coded "http://127.0.0.1:$SSR_PORT/posts/1" br -H 'Host: shop.local'

# Both are hits, compressed, and decode to the same page (ours checked
# through its gzip copy: no brotli CLI needed).
until_coded "http://$OURS/page" gzip
curl -fsS -D "$work/ours.h" -o /dev/null -H "Accept-Encoding: $AE" "http://$OURS/page"
curl -fsS -H "Accept-Encoding: gzip" "http://$OURS/page" | gzip -dc >"$work/a"
curl -fsS -D "$work/nginx.h" -H "Accept-Encoding: $AE" "http://$NGINX1/page" | gzip -dc >"$work/b"
curl -fsS "http://$UP/page" -o "$work/c"
cmp -s "$work/a" "$work/c" && cmp -s "$work/b" "$work/c" \
  || { echo "a decoded page differs from the renderer's" >&2; exit 1; }
grep -qi '^content-encoding: br' "$work/ours.h" && grep -qi '^cache-status: .*hit' "$work/ours.h" \
  || { echo "ours is not a br hit:" >&2; cat "$work/ours.h" >&2; exit 1; }
grep -qi '^content-encoding: gzip' "$work/nginx.h" && grep -qi '^x-cache-status: HIT' "$work/nginx.h" \
  || { echo "nginx is not a gzip hit:" >&2; cat "$work/nginx.h" >&2; exit 1; }

cpu_ticks() { # summed utime+stime of the given pids and their threads
  local t=0 p u s
  for p in "$@"; do
    read -r u s < <(cut -d' ' -f14,15 "/proc/$p/stat")
    t=$((t + u + s))
  done
  echo "$t"
}
nginx_pids() { pgrep -P "$(cat "$work/nginx.pid")"; cat "$work/nginx.pid"; }

run() { # run ROUND NAME URL PIDS...: prints "ROUND NAME req/s cpu_us_per_req"
  local round=$1 name=$2 url=$3; shift 3
  local before after out rps reqs ae=$AE
  # The identity row: the same entry, asked without Accept-Encoding.
  [ "$name" = tower-ssr-id ] && ae=identity
  before=$(cpu_ticks "$@")
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" -H "Accept-Encoding: $ae" "$url")
  after=$(cpu_ticks "$@")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -v r0="$round" -v n="$name" -v r="$rps" -v q="$reqs" -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%s %-10s %10.0f req/s  %6.1f us CPU/req\n", r0, n, r, t / hz * 1e6 / q }' | tee -a "$work/results"
}

# Warm both (connections, page faults).
taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s -H "Accept-Encoding: $AE" "http://$OURS/page" >/dev/null
taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s -H "Accept-Encoding: $AE" "http://$NGINX1/page" >/dev/null

echo "# $ROUNDS rounds, wrk -t1 -c$CONNS -d$DURATION, ${BYTES}-byte page, Accept-Encoding: $AE"
echo "# servers on CPU $SERVER_CPU, renderer+wrk on CPU $LOAD_CPU; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$ROUNDS"); do
  # Who goes first alternates, so a drift in the machine's load hits both.
  if [ $((r % 2)) -eq 1 ]; then
    # shellcheck disable=SC2046
    run "$r" nginx-gz1 "http://$NGINX1/page" $(nginx_pids)
    run "$r" tower-ssr "http://$OURS/page" "$ours_pid"
  else
    run "$r" tower-ssr "http://$OURS/page" "$ours_pid"
    # shellcheck disable=SC2046
    run "$r" nginx-gz1 "http://$NGINX1/page" $(nginx_pids)
  fi
  [ -n "${IDENTITY:-}" ] && run "$r" tower-ssr-id "http://$OURS/page" "$ours_pid"
done
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

# Per-round ratios, then medians and ranges.
awk '{ rps[$1, $2] = $3; cpu[$1, $2] = $5; if ($1 > n) n = $1 }
  function sort(a, k,   i, j, t) { for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t } }
  function median(a, k) { return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2 }
  END {
    for (r = 1; r <= n; r++) {
      t[r] = rps[r, "tower-ssr"] / rps[r, "nginx-gz1"]; c[r] = cpu[r, "nginx-gz1"] / cpu[r, "tower-ssr"]
      printf "round %d: throughput tower-ssr / nginx %.2fx, CPU per hit nginx / tower-ssr %.2fx\n", r, t[r], c[r]
    }
    sort(t, n); sort(c, n)
    printf "throughput ratio: median %.2fx, range %.2f-%.2fx\n", median(t, n), t[1], t[n]
    printf "CPU-per-hit ratio: median %.2fx, range %.2f-%.2fx\n", median(c, n), c[1], c[n]
    if ((1, "tower-ssr-id") in cpu) {
      for (r = 1; r <= n; r++) i[r] = cpu[r, "tower-ssr"] / cpu[r, "tower-ssr-id"]
      sort(i, n)
      printf "CPU per br hit / identity hit (tower-ssr): median %.2fx, range %.2f-%.2fx\n", median(i, n), i[1], i[n]
    }
  }' "$work/results"

size() { # size URL CODING [curl args...]: bytes of the body as sent
  local url=$1 coding=$2; shift 2
  curl -fsS -H "Accept-Encoding: $coding" "$@" "$url" | wc -c
}
echo "# bytes sent (the cache's stored representations; nginx gzip_comp_level 6)"
for page in renderer ssr; do
  if [ "$page" = renderer ]; then
    ours="http://$OURS/page"; nginx6="http://$NGINX6/page"; extra=()
  else
    ours="http://127.0.0.1:$SSR_PORT/posts/1"; nginx6="http://$NGINX6_SSR/posts/1"; extra=(-H 'Host: shop.local')
  fi
  until_coded "$ours" zstd "${extra[@]}"
  until_coded "$ours" gzip "${extra[@]}"
  identity=$(size "$ours" identity "${extra[@]}")
  g6=$(size "$nginx6" gzip "${extra[@]}")
  for coding in br zstd gzip; do
    n=$(size "$ours" "$coding" "${extra[@]}")
    awk -v p="$page" -v c="$coding" -v n="$n" -v g="$g6" -v i="$identity" \
      'BEGIN { printf "%-8s %-4s %6d bytes of %d  = %.3fx nginx gzip-6 (%d)\n", p, c, n, i, n / g, g }'
  done
done
