#!/usr/bin/env bash
# Load benchmark: examples/proxy (round robin, no cache) beside nginx
# `upstream` round robin and examples/minimal_proxy (hyper + hyper-util's
# pooled client, no header work: the floor for a Rust proxy), over the same
# three local renderers, same pinning, alternating rounds in one run. Only
# 127.0.0.1, fixed ports in 27100-27199 (override with BASE_PORT).
#
#   bash scripts/bench-proxy.sh            # 5 rounds of 10 s each
#   ROUNDS=5 DURATION=10s bash scripts/bench-proxy.sh
#   SCHEME=h2c bash scripts/bench-proxy.sh   # tower-ssr to the renderers over
#                                            # HTTP/2 prior knowledge (the
#                                            # others stay on HTTP/1.1)
#   SCHEME=https bash scripts/bench-proxy.sh # all three to the renderers over
#                                            # TLS (HTTP/1.1 inside)
#
# SCHEME=https makes a throwaway CA and a server certificate (P-256, SANs
# IP 127.0.0.1 and DNS localhost) in the work dir with the openssl CLI; the
# renderers serve HTTPS only (rustls, ALPN http/1.1). tower-ssr gets
# `--upstream https://127.0.0.1:PORT --ca-file ca.pem`, minimal_proxy the
# same, nginx `proxy_pass https://` with proxy_ssl_verify on against the CA
# (name `localhost`, sent as SNI), session reuse and upstream keepalive.
# Before the rounds it checks that a plain-HTTP request to a renderer
# fails and that every proxy answers; the renderers' handshake lines
# (full / resumed) are counted at the end.
#
# Needs nginx and wrk (apt-get install -y nginx wrk), and openssl for
# SCHEME=https. Pinning: the proxies on CPU 0 (one nginx worker, one
# tower-ssr runtime thread), renderers and wrk on CPU 1. Besides req/s it
# reports each proxy's CPU time per request (from /proc), which stays
# meaningful when something else limits req/s, and its user and kernel
# parts (10 ms ticks: meaningful over seconds of load).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
BYTES=${BYTES:-8192}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BASE_PORT=${BASE_PORT:-27100}
# nginx's idle upstream connection cache (per worker, shared by the three
# renderers, least recently used evicted). At 64 (until the TLS pass) it
# evicted under 50 client connections, ~75-100 reconnects/s: cheap over TCP,
# a TLS handshake each over https. The Rust pools keep every idle one.
NGINX_KEEPALIVE=${NGINX_KEEPALIVE:-256}
SCHEME=${SCHEME:-http}
OURS=127.0.0.1:$((BASE_PORT + 80))
NGINX=127.0.0.1:$((BASE_PORT + 81))
MINIMAL=127.0.0.1:$((BASE_PORT + 82))
UP=(127.0.0.1:$((BASE_PORT + 1)) 127.0.0.1:$((BASE_PORT + 2)) 127.0.0.1:$((BASE_PORT + 3)))

command -v nginx >/dev/null && command -v wrk >/dev/null || {
  echo "needs nginx and wrk: apt-get install -y nginx wrk" >&2; exit 1; }
case $SCHEME in
  # OURS_SCHEME: what tower-ssr speaks to the renderers; UP_SCHEME: nginx
  # and minimal_proxy (h2c is tower-ssr's alone).
  http | h2c) OURS_SCHEME=$SCHEME UP_SCHEME=http ;;
  https)
    command -v openssl >/dev/null || {
      echo "SCHEME=https needs openssl: apt-get install -y openssl" >&2; exit 1; }
    OURS_SCHEME=https UP_SCHEME=https ;;
  *) echo "SCHEME must be http, h2c or https" >&2; exit 1 ;;
esac

cargo build --release --example proxy --example renderer --example minimal_proxy >&2
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

renderer_tls=() ours_tls=() minimal_up=("${UP[@]}")
nginx_tls=""
if [ "$SCHEME" = https ]; then
  # A throwaway CA, and a server certificate from it for the renderers.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=tower-ssr bench CA" -keyout "$work/ca.key" -out "$work/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
    -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
  printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$work/server.ext"
  openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
    -CAcreateserial -days 2 -extfile "$work/server.ext" -out "$work/server.pem" 2>/dev/null
  renderer_tls=(--tls-cert "$work/server.pem" --tls-key "$work/server.key")
  ours_tls=(--ca-file "$work/ca.pem")
  minimal_up=("https://${UP[0]}" "https://${UP[1]}" "https://${UP[2]}" --ca-file "$work/ca.pem")
  # nginx checks the name with X509_check_host (no IP SANs): `localhost`,
  # also sent as SNI. nginx 1.22 leaves TLSv1.3 out of its default
  # proxy_ssl_protocols; the Rust clients negotiate 1.3, so nginx may too.
  nginx_tls="
      proxy_ssl_trusted_certificate $work/ca.pem;
      proxy_ssl_verify on;
      proxy_ssl_verify_depth 2;
      proxy_ssl_name localhost;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
      proxy_ssl_protocols TLSv1.2 TLSv1.3;"
fi

i=0
for addr in "${UP[@]}"; do
  i=$((i + 1))
  taskset -c "$LOAD_CPU" target/release/examples/renderer --listen "$addr" --name "r$i" --bytes "$BYTES" \
    "${renderer_tls[@]}" >"$work/r$i.log" 2>&1 &
  pids+=($!)
  wait_for "$work/r$i.log"
done

taskset -c "$PROXY_CPU" target/release/examples/proxy --listen "$OURS" \
  --upstream "$OURS_SCHEME://${UP[0]}" --upstream "$OURS_SCHEME://${UP[1]}" \
  --upstream "$OURS_SCHEME://${UP[2]}" "${ours_tls[@]}" \
  --strategy round-robin --no-cache --threads 1 >"$work/proxy.log" 2>&1 &
ours_pid=$!
pids+=($ours_pid)
wait_for "$work/proxy.log"

taskset -c "$PROXY_CPU" target/release/examples/minimal_proxy "$MINIMAL" "${minimal_up[@]}" \
  >"$work/minimal.log" 2>&1 &
minimal_pid=$!
pids+=($minimal_pid)
wait_for "$work/minimal.log"

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
  upstream renderers {
    server ${UP[0]};
    server ${UP[1]};
    server ${UP[2]};
    keepalive $NGINX_KEEPALIVE;
  }
  server {
    listen $NGINX;
    location / {
      proxy_pass $UP_SCHEME://renderers;$nginx_tls
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
CONF
taskset -c "$PROXY_CPU" nginx -c "$work/nginx.conf" -p "$work"
for _ in $(seq 1 50); do [ -s "$work/nginx.pid" ] && break; sleep 0.1; done

# Over TLS the renderers refuse plain HTTP, and answer with the test CA.
if [ "$SCHEME" = https ]; then
  for addr in "${UP[@]}"; do
    if curl -fsS -m 2 "http://$addr/healthz" >/dev/null 2>&1; then
      echo "renderer $addr answered plain HTTP" >&2; exit 1
    fi
    curl -fsS --cacert "$work/ca.pem" "https://$addr/healthz" >/dev/null
  done
fi

# All three answer, with the same body (over TLS: so they speak it).
curl -fsS "http://$OURS/page" -o "$work/a" && curl -fsS "http://$NGINX/page" -o "$work/b" && cmp -s "$work/a" "$work/b"
curl -fsS "http://$MINIMAL/page" -o "$work/c" && cmp -s "$work/a" "$work/c"

cpu_ticks() { # summed utime and stime of the given pids and their threads
  local tu=0 ts=0 p u s
  for p in "$@"; do
    read -r u s < <(cut -d' ' -f14,15 "/proc/$p/stat")
    tu=$((tu + u))
    ts=$((ts + s))
  done
  echo "$tu $ts"
}
nginx_pids() { pgrep -P "$(cat "$work/nginx.pid")"; cat "$work/nginx.pid"; }

run() { # run NAME URL PIDS...: prints "NAME req/s cpu_us_per_req" and its user / kernel parts
  local name=$1 url=$2; shift 2
  local bu bs au as out rps reqs
  read -r bu bs < <(cpu_ticks "$@")
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" "$url")
  read -r au as < <(cpu_ticks "$@")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -v n="$name" -v r="$rps" -v q="$reqs" -v u=$((au - bu)) -v k=$((as - bs)) -v hz="$(getconf CLK_TCK)" \
    'BEGIN { f = 1e6 / hz / q; printf "%-12s %10.0f req/s  %6.1f us CPU/req  %6.1f user %6.1f kernel\n", n, r, (u + k) * f, u * f, k * f }' |
    tee -a "$work/results"
}

# Warm both (connection pools, page faults).
taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s "http://$OURS/page" >/dev/null
taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s "http://$NGINX/page" >/dev/null
taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s "http://$MINIMAL/page" >/dev/null

echo "# $ROUNDS rounds, wrk -t1 -c$CONNS -d$DURATION, ${BYTES}-byte page, proxies on CPU $PROXY_CPU, renderers+wrk on CPU $LOAD_CPU"
echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$ROUNDS"); do
  # shellcheck disable=SC2046
  run nginx "http://$NGINX/page" $(nginx_pids)
  run minimal "http://$MINIMAL/page" "$minimal_pid"
  run tower-ssr "http://$OURS/page" "$ours_pid"
done

echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

if [ "$SCHEME" = https ]; then
  # Handshakes over the whole run (checks, warm-up, rounds), by client:
  # nginx sends SNI `localhost` and no ALPN, minimal_proxy neither,
  # tower-ssr ALPN h2+http/1.1 (so `http/1.1` here; the three curl checks
  # count with it). With pooled connections each stays near one or two
  # times CONNS; nginx also drops the upstream connections of requests that
  # wrk abandons at the end of each round.
  echo "# TLS handshakes at the renderers (version suite alpn sni kind):"
  # Failed ones: the three plain-HTTP checks, and any handshake a proxy
  # dropped when wrk stopped.
  awk '/^tls: / { sub(/^tls: /, ""); n[$0]++ }
    END { for (k in n) printf "#   %6d  %s\n", n[k], k }' "$work"/r*.log | sort -k5,6 -k2
fi

# Per-round ratios (the spread), medians over the rounds, and the ratios
# the issue's goal is stated in.
awk '{ n[$1]++; c[$1, n[$1]] = $4 }
  END { printf "per round, tower-ssr / minimal:"; for (i = 1; i <= n["tower-ssr"]; i++) printf " %.2f", c["tower-ssr", i] / c["minimal", i]
        printf "\nper round, tower-ssr / nginx:  "; for (i = 1; i <= n["tower-ssr"]; i++) printf " %.2f", c["tower-ssr", i] / c["nginx", i]
        printf "\n" }' "$work/results"
awk '{ cpu[$1] = cpu[$1] " " $4; rps[$1] = rps[$1] " " $2; usr[$1] = usr[$1] " " $7; ker[$1] = ker[$1] " " $9 }
  function median(list,   a, n, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  END {
    for (k in cpu) {
      m[k] = median(cpu[k]); mu[k] = median(usr[k])
      printf "median %-12s %10.0f req/s  %6.1f us CPU/req  %6.1f user %6.1f kernel\n", k, median(rps[k]), m[k], mu[k], median(ker[k])
    }
    if (m["minimal"] > 0) printf "tower-ssr / minimal CPU per request: %.2f\n", m["tower-ssr"] / m["minimal"]
    if (m["nginx"] > 0) printf "tower-ssr / nginx   CPU per request: %.2f\n", m["tower-ssr"] / m["nginx"]
    # The kernel part (loopback TCP, epoll) is much the same for all
    # three and noisy; the user part is where the proxies differ.
    if (mu["minimal"] > 0) printf "tower-ssr / minimal user CPU per request: %.2f\n", mu["tower-ssr"] / mu["minimal"]
  }' "$work/results"
