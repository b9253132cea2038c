#!/usr/bin/env bash
# Resident memory of examples/proxy with a bounded cache, over N unique
# cacheable URLs from examples/renderer (issue 8, §6). Only 127.0.0.1.
#
#   bash scripts/cache-rss.sh                         # 64 MiB cache, 1 KB pages, 200,000 URLs
#   BYTES=10240 URLS=200000 bash scripts/cache-rss.sh
#   REDIS=1 bash scripts/cache-rss.sh                 # with the Redis tier (own redis-server)
#   CACHE_MB=off bash scripts/cache-rss.sh            # the same load with --no-cache (the base)
#
# Prints one line: pages, URLs, mode, the proxy's VmRSS idle (before the
# load), VmRSS after the load and VmHWM (its peak), in MiB, plus the bound
# capacity x 1.2 + base. SMAPS=FILE keeps /proc/PID/smaps. Needs wrk (apt-get install -y wrk), and
# redis-server for REDIS=1. Extra proxy flags go in PROXY_FLAGS; the proxy's
# environment is passed on (try MALLOC_ARENA_MAX=2).
set -euo pipefail
cd "$(dirname "$0")/.."

BYTES=${BYTES:-1024}
URLS=${URLS:-200000}
CACHE_MB=${CACHE_MB:-64}
REDIS=${REDIS:-0}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
PROXY_FLAGS=${PROXY_FLAGS:-}
PROXY=127.0.0.1:${PROXY_PORT:-23180}
UP=127.0.0.1:${UP_PORT:-23181}
REDIS_PORT=${REDIS_PORT:-23182}

command -v wrk >/dev/null || { echo "needs wrk: apt-get install -y wrk" >&2; exit 1; }
[ "${BUILD:-1}" = 1 ] && cargo build --release --features redis --example proxy --example renderer >&2

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # wait_for FILE: until a process printed "listening on"
  for _ in $(seq 1 100); do grep -q "listening on" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for $1" >&2; cat "$1" >&2; exit 1
}
mib() { # mib PID FIELD: a /proc/PID/status field (kB) in MiB, one decimal
  awk -v f="$2:" '$1 == f { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

target/release/examples/renderer --listen "$UP" --bytes "$BYTES" >"$work/r.log" 2>&1 &
pids+=($!)
wait_for "$work/r.log"

flags=(--listen "$PROXY" --upstream "http://$UP" $PROXY_FLAGS)
if [ "$CACHE_MB" = off ]; then
  flags+=(--no-cache)
  mode="no-cache"
else
  flags+=(--cache-mb "$CACHE_MB")
  mode="cache ${CACHE_MB} MiB"
fi
if [ "$REDIS" = 1 ]; then
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    >"$work/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  flags+=(--redis "redis://127.0.0.1:$REDIS_PORT")
  mode="$mode + redis"
fi
target/release/examples/proxy "${flags[@]}" >"$work/p.log" 2>&1 &
proxy=$!
pids+=($proxy)
wait_for "$work/p.log"
idle=$(mib "$proxy" VmRSS)

# Every wrk thread asks for its own URLs, each once, and stops after its
# share (a few more may be in flight on its connections).
cat >"$work/urls.lua" <<'LUA'
local count = 0
function setup(thread)
  thread:set("id", count)
  count = count + 1
end
function init(args)
  per = tonumber(args[1])
  done = args[2] .. "/done." .. id
  i = 0
end
function request()
  i = i + 1
  return wrk.format("GET", "/page/" .. id .. "/" .. i)
end
function response(status, headers, body)
  if status ~= 200 then io.stderr:write("status " .. status .. "\n") end
  if i >= per and not finished then
    finished = true
    io.open(done, "w"):close()
    wrk.thread:stop()
  end
end
LUA
# wrk waits out its whole -d even when every thread has stopped; it ends
# early, with its summary, on SIGINT once each thread has left its mark.
wrk -t "$THREADS" -c "$CONNS" -d 900s -s "$work/urls.lua" "http://$PROXY/" -- \
  $((URLS / THREADS)) "$work" >"$work/wrk.log" 2>&1 &
load=$!
until [ "$(ls "$work" | grep -c '^done\.')" -ge "$THREADS" ] || ! kill -0 "$load" 2>/dev/null; do
  sleep 0.2
done
kill -INT "$load" 2>/dev/null || true
wait "$load" || true
sleep 1
rss=$(mib "$proxy" VmRSS)
hwm=$(mib "$proxy" VmHWM)
# SMAPS=FILE keeps the proxy's memory map after the load, for telling the
# heap arenas (64 MiB reservations), mapped bodies and [heap] apart.
[ -n "${SMAPS:-}" ] && cp "/proc/$proxy/smaps" "$SMAPS"
reqs=$(awk '/requests in/ { print $1 }' "$work/wrk.log")
printf 'pages %s B, %s requests, %s: idle %s MiB, after %s MiB, peak %s MiB\n' \
  "$BYTES" "$reqs" "$mode" "$idle" "$rss" "$hwm"
