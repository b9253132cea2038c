#!/usr/bin/env bash
# User-space instructions and mallocs per forwarded request, counted by
# valgrind's callgrind: deterministic, so a before/after comparison holds
# on a loaded machine where CPU time per request swings by ±20 %
# (BENCHMARKS.md, issue 10).
#
#   bash scripts/proxy-instructions.sh              # examples/proxy and minimal_proxy
#   WHICH=proxy bash scripts/proxy-instructions.sh  # one of them
#   KEEP=/tmp/dumps bash scripts/proxy-instructions.sh  # keep the dumps
#                                   # for callgrind_annotate --inclusive=yes
#
# Each proxy runs alone under callgrind in front of three
# `examples/renderer` processes (8 KiB page), as in scripts/bench-proxy.sh
# (`--strategy round-robin --no-cache --threads 1`). After a warm-up the
# counters are zeroed (`callgrind_control -z`), `wrk -t1 -c10` runs for
# DURATION, and the dump's total `Ir` and calls to libc's `malloc` are
# divided by the requests wrk completed. Kernel work (loopback TCP) is not
# in the count. Only 127.0.0.1, ports 27200-27299 (override BASE_PORT).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null && command -v wrk >/dev/null || {
  echo "needs valgrind and wrk: apt-get install -y valgrind wrk" >&2; exit 1; }

WHICH=${WHICH:-proxy minimal}
DURATION=${DURATION:-6s}
BASE_PORT=${BASE_PORT:-27200}
LISTEN=127.0.0.1:$((BASE_PORT + 80))
UP=(127.0.0.1:$((BASE_PORT + 1)) 127.0.0.1:$((BASE_PORT + 2)) 127.0.0.1:$((BASE_PORT + 3)))

cargo build --release --example proxy --example renderer --example minimal_proxy >&2
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # wait_for FILE: until a process printed "listening on"
  for _ in $(seq 1 300); do grep -q "listening on" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for $1" >&2; cat "$1" >&2; exit 1
}

i=0
for addr in "${UP[@]}"; do
  i=$((i + 1))
  target/release/examples/renderer --listen "$addr" --name "r$i" --bytes 8192 >"$work/r$i.log" 2>&1 &
  pids+=($!)
  wait_for "$work/r$i.log"
done

for which in $WHICH; do
  case $which in
    proxy) cmd=(target/release/examples/proxy --listen "$LISTEN"
             --upstream "http://${UP[0]}" --upstream "http://${UP[1]}" --upstream "http://${UP[2]}"
             --strategy round-robin --no-cache --threads 1) ;;
    minimal) cmd=(target/release/examples/minimal_proxy "$LISTEN" "${UP[@]}") ;;
    *) echo "unknown proxy $which" >&2; exit 1 ;;
  esac
  out="$work/callgrind.$which"
  valgrind --tool=callgrind --callgrind-out-file="$out" "${cmd[@]}" >"$work/$which.log" 2>&1 &
  pid=$!
  pids+=($pid)
  wait_for "$work/$which.log"
  wrk -t1 -c10 -d2s "http://$LISTEN/page" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  reqs=$(wrk -t1 -c10 -d"$DURATION" "http://$LISTEN/page" | awk '/requests in/ {print $1}')
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  # The dump after zeroing is the last part file written.
  dump=$(ls -t "$out".* 2>/dev/null | head -1)
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$dump" "$KEEP/callgrind.$which"; fi
  python3 - "$which" "$reqs" "$dump" <<'PY'
import re, sys
which, reqs, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
total, mallocs = 0, 0
names, cfn = {}, None
for line in open(path):
    if line.startswith("summary:") or line.startswith("totals:"):
        total = int(line.split()[1])
    elif line.startswith("cfn="):
        m = re.match(r"cfn=\((\d+)\)(?: (.*))?", line.strip())
        if m:
            if m.group(2):
                names[m.group(1)] = m.group(2)
            cfn = names.get(m.group(1))
    elif line.startswith("fn="):
        m = re.match(r"fn=\((\d+)\)(?: (.*))?", line.strip())
        if m and m.group(2):
            names[m.group(1)] = m.group(2)
    elif line.startswith("calls=") and cfn in ("malloc", "realloc", "calloc"):
        if cfn == "malloc":
            mallocs += int(line.split("=")[1].split()[0])
print(f"{which:<8} {reqs:>6} requests  {total / reqs / 1000:6.1f}k instructions/request  {mallocs / reqs:5.1f} mallocs/request")
PY
done
