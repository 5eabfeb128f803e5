#!/usr/bin/env bash
# Edge-gateway benchmark: an h2 TLS client (ALPN h2) to an HTTP/1.1 app
#   Weft:          client -> weft-sidecar gateway --https -> mTLS HTTP/2 -> weft-sidecar run -> app
#   HAProxy:       client -> one HAProxy (TLS, ALPN h2,http/1.1; bench/haproxy-gateway.cfg) -> app
#   HAProxy 2-hop: client -> HAProxy edge (TLS in; bench/haproxy-edge.cfg) -> mTLS HTTP/2 ->
#                  HAProxy in (bench/haproxy-in.cfg) -> app: the same two-hop job as Weft
# measured in one run on loopback: max req/s (h2load -c10 -m10), CPU per request of the
# proxies (utime+stime from /proc), requests per proxy-core-second, and p50/p99 at a fixed
# rate (bench-gateway: open loop, latency from the intended send time). The app is nginx
# with a 1 KB response over HTTP/1.1 for every path; the public servers get the same
# ECDSA P-256 certificate (made here with openssl) and negotiate TLS 1.3 AES-128-GCM; the
# two-hop peer's inner hop is mTLS (its own ECDSA P-256 CA, client certificate verified),
# as Weft's is. Last, an isolation figure: five clients' 2 MB downloads through the Weft
# gateway, alone and while another client holds 12 streams of 8 MB it never reads
# (initial window 0; tests/py/attack_suite.py isolation).
#
#   bench/gateway.sh                # builds release binaries, runs (~2-3 min), prints the table
#   DUR=5 bench/gateway.sh          # seconds per point (default 10)
#   RATE=2000 bench/gateway.sh      # fixed rate for the latency points (default 1000)
#   ROUNDS=1 bench/gateway.sh       # max-throughput rounds, alternating the paths (default 2)
#   SKIP_BUILD=1 bench/gateway.sh   # use the binaries already in target/release
#   KEEP=1 bench/gateway.sh         # keep the work dir (logs, h2load outputs)
#   QUIET_WAIT=0 bench/gateway.sh   # do not wait for a quiet machine (default: up to 120 s)
#   bench/gateway.sh hold           # set everything up, print the addresses, wait
#   WRAP_WEFT="valgrind --tool=callgrind --collect-atstart=no" bench/gateway.sh hold
#                                   # the sidecar and the measured gateway run under this
#                                   # prefix (instruction counts per request: see
#                                   # docs/benchmarks.md)
#
# Weft's gateway runs with RUST_LOG=info,weft::access=off (HAProxy has `no log`); a second
# gateway with its per-request access log on (to a file) is measured as an extra row.
# Pinning: load generators (h2load, bench-gateway) on CPU 0; nginx, weft-cp, the sidecar,
# the gateways and HAProxy on CPU 1.
# Needs (Debian): nghttp2-client haproxy nginx-light openssl curl util-linux python3
# (installed with apt-get when missing and run as root), and the Python packages of
# tests/py/requirements.txt for the isolation figure.
# Fixed loopback ports: 18080 (nginx), 19500-19532, 19543-19545.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
DUR=${DUR:-10}
RATE=${RATE:-1000}
ROUNDS=${ROUNDS:-2}
rel="${REL:-$root/target/release}"   # REL=DIR: binaries from elsewhere (e.g. a saved build)
HOST=bench.example.com
APP=127.0.0.1:18080
CP=127.0.0.1:19500; CP_HTTP=127.0.0.1:19501
SC_IN=127.0.0.1:19510; SC_ADMIN=127.0.0.1:19511; SC_OUT_IP=127.0.19.50
GW_HTTP=127.0.0.1:19520; GW_TLS=127.0.0.1:19521; GW_ADMIN=127.0.0.1:19522
GWL_HTTP=127.0.0.1:19530; GWL_TLS=127.0.0.1:19531; GWL_ADMIN=127.0.0.1:19532
HAP_PORT=19543
HAP2_EDGE_PORT=19544; HAP2_IN_PORT=19545

# ---------------------------------------------------------------- prerequisites
need_tools() { local t; for t in h2load haproxy nginx openssl curl taskset awk python3; do command -v "$t" >/dev/null 2>&1 || echo "$t"; done; }
if [ -n "$(need_tools)" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing $(need_tools | tr '\n' ' ')(apt-get)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client haproxy nginx-light openssl curl util-linux python3 >/dev/null
fi
missing=$(need_tools | tr '\n' ' ')
if [ -n "$missing" ]; then
  echo "missing tools: $missing" >&2
  echo "install: apt-get install -y nghttp2-client haproxy nginx-light openssl curl util-linux python3" >&2
  exit 2
fi
[ "$(nproc --all)" -ge 2 ] || { echo "needs 2 CPUs (load generator on 0, servers on 1)" >&2; exit 2; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "== building release binaries"
  cargo build --release --workspace --bins --locked --quiet
fi
for b in weft-cp weftctl weft-sidecar bench-gateway; do
  [ -x "$rel/$b" ] || { echo "$rel/$b missing: cargo build --release --workspace --bins" >&2; exit 2; }
done

for p in 18080 19500 19501 19510 19511 19520 19521 19522 19530 19531 19532 $HAP_PORT $HAP2_EDGE_PORT $HAP2_IN_PORT; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p on 127.0.0.1 is in use; free it first" >&2
    exit 2
  fi
done

W=$(mktemp -d /tmp/weft-bench-gw.XXXXXX)
pids=()
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in haproxy haproxy-edge haproxy-in; do
    [ -f "$W/run/$f.pid" ] && kill "$(cat "$W/run/$f.pid")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] && echo "(kept $W)" || rm -rf "$W"
}
trap cleanup EXIT
trap "exit 130" INT TERM   # runs cleanup through the EXIT trap
mkdir -p "$W/run" "$W/certs" "$W/nginx" "$W/logs"
gen() { taskset -c 0 "$@"; }   # load generators: CPU 0 (servers are started with taskset -c 1)
wait_tcp() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on $1:$2" >&2; return 1; }
wait_ready() { # admin-addr what
  for _ in $(seq 1 300); do curl -fs "http://$1/ready" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "$2 (admin $1) not ready" >&2; tail -n 20 "$W"/logs/*.log >&2; return 1
}

# Other work on the machine shows up in the figures (the tails most): wait (up to
# QUIET_WAIT s) for the 1-minute load average to drop under QUIET_LOAD before starting.
QUIET_LOAD=${QUIET_LOAD:-1.0}; QUIET_WAIT=${QUIET_WAIT:-120}
for _ in $(seq 1 "$((QUIET_WAIT / 5))"); do
  awk -v l="$QUIET_LOAD" '{ exit !($1 < l) }' /proc/loadavg && break
  [ "${waited:-0}" = 1 ] || { echo "== waiting up to ${QUIET_WAIT}s for load average < $QUIET_LOAD (now $(cut -d' ' -f1 /proc/loadavg))"; waited=1; }
  sleep 5
done
echo "== machine: $(nproc --all) CPUs, $(uptime | sed 's/.*load/load/')"

# ---------------------------------------------------------------- certificate (both servers)
(
  cd "$W/certs"
  openssl ecparam -name prime256v1 -genkey -noout -out ca.key
  openssl req -x509 -new -key ca.key -sha256 -days 30 -subj "/CN=bench-edge-ca" -out ca.crt
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server.key
  openssl req -new -key server.key -subj "/CN=$HOST" -out server.csr
  printf "subjectAltName=DNS:$HOST,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" > server.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -sha256 -extfile server.ext -out server.crt
  cat server.crt server.key > server.pem
  # The two-hop peer's inner hop: a mesh CA, the inbound's server certificate and the
  # edge's client certificate (both ECDSA P-256, as Weft's workload certificates).
  openssl ecparam -name prime256v1 -genkey -noout -out mesh-ca.key
  openssl req -x509 -new -key mesh-ca.key -sha256 -days 30 -subj "/CN=bench-mesh-ca" -out mesh-ca.crt
  for who in inbound edge-client; do
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$who.key"
    openssl req -new -key "$who.key" -subj "/CN=$who.mesh.test" -out "$who.csr"
    if [ "$who" = inbound ]; then
      printf "subjectAltName=DNS:inbound.mesh.test\nextendedKeyUsage=serverAuth\n" > "$who.ext"
    else
      printf "subjectAltName=DNS:edge-client.mesh.test\nextendedKeyUsage=clientAuth\n" > "$who.ext"
    fi
    openssl x509 -req -in "$who.csr" -CA mesh-ca.crt -CAkey mesh-ca.key -CAcreateserial -days 30 -sha256 -extfile "$who.ext" -out "$who.crt"
    cat "$who.crt" "$who.key" > "$who.pem"
  done
) >"$W/logs/certs.log" 2>&1

# ---------------------------------------------------------------- app: nginx, 1 KB body, HTTP/1.1
body=$(head -c 1024 /dev/zero | tr '\0' 'x')
cat >"$W/nginx/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $W/nginx/nginx.pid;
error_log $W/logs/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $W/nginx/body; proxy_temp_path $W/nginx/proxy;
  fastcgi_temp_path $W/nginx/fcgi; uwsgi_temp_path $W/nginx/uwsgi; scgi_temp_path $W/nginx/scgi;
  keepalive_requests 100000000; keepalive_timeout 300s;
  default_type text/plain;
  server {
    listen $APP;
    location / { return 200 "$body"; }
    location /iso/ { alias $W/www/; }   # the isolation figure's downloads
  }
}
EOF
mkdir -p "$W/www"
head -c 2000000 /dev/urandom >"$W/www/2m.bin"
head -c 8000000 /dev/urandom >"$W/www/8m.bin"
taskset -c 1 nginx -p "$W/nginx" -c "$W/nginx/nginx.conf" >"$W/logs/nginx.out" 2>&1 &
pids+=($!); NGINX=$!
wait_tcp 127.0.0.1 18080
[ "$(curl -s "http://$APP/" | wc -c)" = 1024 ] || { echo "nginx does not serve 1 KB" >&2; exit 1; }

# ---------------------------------------------------------------- Weft: cp, one sidecar, gateways
export RUST_LOG="${RUST_LOG:-info}"
taskset -c 1 "$rel/weft-cp" --data-dir "$W/cp" --listen $CP --http $CP_HTTP >"$W/logs/cp.log" 2>&1 &
pids+=($!); CP_PID=$!
for _ in $(seq 1 200); do
  [ -f "$W/cp/admin.token" ] && curl -fsS "http://$CP_HTTP/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
ctl() { "$rel/weftctl" --cp "https://$CP" --token "$(cat "$W/cp/admin.token")" --ca "$W/cp/ca.pem" "$@"; }
ctl service create bench-web --protocol http >/dev/null
ctl route create "$HOST" --service bench-web >/dev/null
token() { ctl -o json token create "$@" | tr -d ' \n' | sed -n 's/.*"token":"\([^"]*\)".*/\1/p'; }
taskset -c 1 ${WRAP_WEFT:-} "$rel/weft-sidecar" run --cp "https://$CP" --token "$(token --service bench-web)" \
  --service bench-web --app $APP --region bench --inbound $SC_IN --admin $SC_ADMIN \
  --outbound-ip $SC_OUT_IP --state-dir "$W/state-sidecar" >"$W/logs/sidecar.log" 2>&1 &
pids+=($!); SC=$!
gateway() { # name http https admin log-filter [wrapper]
  RUST_LOG="$5" taskset -c 1 ${6:-} "$rel/weft-sidecar" gateway --cp "https://$CP" --token "$(token --gateway "$1")" \
    --http "$2" --https "$3" --admin "$4" --region bench \
    --tls-cert "$W/certs/server.crt" --tls-key "$W/certs/server.key" \
    --state-dir "$W/state-$1" >"$W/logs/$1.log" 2>&1 &
  pids+=($!)
}
gateway edge $GW_HTTP $GW_TLS $GW_ADMIN "$RUST_LOG,weft::access=off" "${WRAP_WEFT:-}"; GW=$!
gateway edge-log $GWL_HTTP $GWL_TLS $GWL_ADMIN "$RUST_LOG"; GWL=$!
wait_ready $SC_ADMIN sidecar; wait_ready $GW_ADMIN gateway; wait_ready $GWL_ADMIN "gateway (access log)"
tls_get() { # port -> body size over TLS h2 with SNI/Host = $HOST
  curl -s --max-time 3 --http2 --cacert "$W/certs/ca.crt" --connect-to "$HOST:$1:127.0.0.1:$1" \
    -w '%{http_version}' -o "$W/logs/probe.body" "https://$HOST:$1/" 2>/dev/null | grep -qx 2 || return 1
  wc -c <"$W/logs/probe.body"
}
for port in ${GW_TLS##*:} ${GWL_TLS##*:}; do
  for _ in $(seq 1 150); do [ "$(tls_get "$port" || true)" = 1024 ] && break; sleep 0.2; done
  [ "$(tls_get "$port" || true)" = 1024 ] || { echo "the gateway on :$port does not answer h2 over TLS with 1 KB" >&2; tail -n 20 "$W"/logs/*.log >&2; exit 1; }
done

# ---------------------------------------------------------------- HAProxy
export BENCH_CERTS="$W/certs" BENCH_RUN="$W/run" BENCH_APP=$APP BENCH_TLS_PORT=$HAP_PORT
taskset -c 1 haproxy -f "$root/bench/haproxy-gateway.cfg" >"$W/logs/haproxy.log" 2>&1
wait_tcp 127.0.0.1 $HAP_PORT
HAP=$(cat "$W/run/haproxy.pid")
[ "$(tls_get $HAP_PORT || true)" = 1024 ] || { echo "HAProxy :$HAP_PORT does not answer h2 over TLS with 1 KB" >&2; cat "$W/logs/haproxy.log" >&2; exit 1; }
export BENCH_EDGE_PORT=$HAP2_EDGE_PORT BENCH_IN_PORT=$HAP2_IN_PORT
taskset -c 1 haproxy -f "$root/bench/haproxy-in.cfg" >"$W/logs/haproxy-in.log" 2>&1
taskset -c 1 haproxy -f "$root/bench/haproxy-edge.cfg" >"$W/logs/haproxy-edge.log" 2>&1
wait_tcp 127.0.0.1 $HAP2_EDGE_PORT
HAPE=$(cat "$W/run/haproxy-edge.pid"); HAPI=$(cat "$W/run/haproxy-in.pid")
[ "$(tls_get $HAP2_EDGE_PORT || true)" = 1024 ] || { echo "the two HAProxies (:$HAP2_EDGE_PORT) do not answer h2 over TLS with 1 KB" >&2; cat "$W"/logs/haproxy-*.log >&2; exit 1; }

if [ "${1:-}" = hold ]; then
  echo "== holding (Ctrl-C stops). Weft: https://$HOST:${GW_TLS##*:} (gateway pid $GW, sidecar pid $SC);"
  echo "   with access log https://$HOST:${GWL_TLS##*:} (pid $GWL); HAProxy https://$HOST:$HAP_PORT (pid $HAP);"
  echo "   two HAProxies https://$HOST:$HAP2_EDGE_PORT (edge pid $HAPE, in pid $HAPI);"
  echo "   nginx $APP (pid $NGINX); CA $W/certs/ca.crt; logs in $W/logs"
  echo "   e.g. taskset -c 0 h2load -c10 -m10 -D10 --connect-to=127.0.0.1:${GW_TLS##*:} https://$HOST:${GW_TLS##*:}/"
  while sleep 1; do :; done
fi

# ---------------------------------------------------------------- helpers
HZ=$(getconf CLK_TCK)
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
# CPU 1 busy ticks (everything that ran there, ours or not) and total ticks
cpu1() { awk '$1=="cpu1"{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; }
declare -A LOTHER RPS REQS CPU APPCPU FOREIGN ERR P50 P90 P99 P999 PMAX LERR CPUR BEST_RPS BEST_CPU BEST_APP BEST_FOREIGN
ours="$NGINX $CP_PID $SC $GW $GWL $HAP $HAPE $HAPI"

# max throughput: name port proxy-pids...
maxrps() {
  local name=$1 port=$2; shift 2
  local t0 t1 a0 a1 o0 o1 c0 c1 out reqs rps errs non2xx
  local each0=() each1=() p
  for p in "$@"; do each0+=("$(ticks "$p")"); done
  t0=$(ticks "$@"); a0=$(ticks $NGINX); o0=$(ticks $ours); read -r c0 _ < <(cpu1)
  out=$(gen h2load -t1 -c10 -m10 -D "$DUR" --tls13-ciphers=TLS_AES_128_GCM_SHA256 \
    --connect-to="127.0.0.1:$port" "https://$HOST:$port/" 2>&1) || true
  t1=$(ticks "$@"); a1=$(ticks $NGINX); o1=$(ticks $ours); read -r c1 _ < <(cpu1)
  for p in "$@"; do each1+=("$(ticks "$p")"); done
  echo "$out" >"$W/logs/max-$name-$round.txt"
  reqs=$(awk '/^requests:/{print $8}' <<<"$out")
  rps=$(awk '/^finished in/{gsub(/,/,""); printf "%.0f", $4}' <<<"$out")
  errs=$(awk '/^requests:/{print $10+$12}' <<<"$out")
  non2xx=$(awk '/^status codes:/{print $5+$7+$9}' <<<"$out")
  local proto cipher; proto=$(awk -F': ' '/^Application protocol/{print $2}' <<<"$out"); cipher=$(awk -F': ' '/^Cipher/{print $2}' <<<"$out")
  [ "${reqs:-0}" -gt 0 ] || { echo "   $name: h2load failed:" >&2; tail -5 <<<"$out" >&2; reqs=0; }
  local cpu app foreign
  cpu=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v n="${reqs:-0}" 'BEGIN{ if (n > 0) printf "%.1f", d / hz * 1e6 / n; else print "-" }')
  app=$(awk -v d=$((a1 - a0)) -v hz="$HZ" -v n="${reqs:-0}" 'BEGIN{ if (n > 0) printf "%.1f", d / hz * 1e6 / n; else print "-" }')
  # share of CPU 1 that other processes (builds, ...) took during the point
  foreign=$(awk -v b=$((c1 - c0)) -v o=$((o1 - o0)) -v hz="$HZ" -v d="$DUR" 'BEGIN{ f = (b - o) / (hz * d) * 100; if (f < 0) f = 0; printf "%.0f%%", f }')
  local split="" i
  if [ $# -gt 1 ]; then
    for i in "${!each0[@]}"; do
      split+="${split:+ + }$(awk -v d=$((each1[i] - each0[i])) -v hz="$HZ" -v n="${reqs:-0}" 'BEGIN{ if (n > 0) printf "%.1f", d / hz * 1e6 / n; else print "-" }')"
    done
    split=" ($split)"
  fi
  printf '   %-12s round %d  %6s req/s  proxy cpu %5s us/req%s  app %4s us/req  %s %s  errors %s non-2xx %s  other load on cpu1 %s\n' \
    "$name" "$round" "${rps:-0}" "$cpu" "$split" "$app" "${proto:-?}" "${cipher:-?}" "${errs:-?}" "${non2xx:-?}" "$foreign"
  ERR[$name]=$(( ${ERR[$name]:-0} + ${errs:-0} + ${non2xx:-0} ))
  if [ "${rps:-0}" -gt "${BEST_RPS[$name]:-0}" ]; then
    BEST_RPS[$name]=$rps; BEST_CPU[$name]=$cpu; BEST_APP[$name]=$app; BEST_FOREIGN[$name]=$foreign
  fi
}
# fixed-rate latency: name port proxy-pids...
lat() {
  local name=$1 port=$2 out t0 t1 e o0 o1 c0 c1; shift 2
  t0=$(ticks "$@"); o0=$(ticks $ours); read -r c0 _ < <(cpu1)
  out=$(gen "$rel/bench-gateway" --addr "127.0.0.1:$port" --host $HOST --ca "$W/certs/ca.crt" \
    --rate "$RATE" --duration "$DUR" --warmup 1 --conns 4 2>&1) || true
  t1=$(ticks "$@"); o1=$(ticks $ours); read -r c1 _ < <(cpu1)
  echo "$out" >"$W/logs/lat-$name.txt"
  # CPU 1 time taken by processes outside the benchmark during the point
  LOTHER[$name]=$(awk -v b=$((c1 - c0)) -v o=$((o1 - o0)) -v hz="$HZ" -v d="$DUR" 'BEGIN{ f = (b - o) / (hz * (d + 1.3)) * 100; if (f < 0) f = 0; printf "%.0f%%", f }')
  P50[$name]=$(kv p50_us "$out"); P90[$name]=$(kv p90_us "$out"); P99[$name]=$(kv p99_us "$out")
  P999[$name]=$(kv p999_us "$out"); PMAX[$name]=$(kv max_us "$out"); e=$(kv err "$out"); LERR[$name]=${e:-?}
  CPUR[$name]=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v r="$RATE" -v w="$DUR" 'BEGIN{printf "%.1f", d / hz * 1e6 / (r * (w + 1))}')
  printf '   %-12s p50 %5s us  p90 %5s us  p99 %6s us  p99.9 %6s us  max %6s us  err %s  proxy cpu %s us/req  other load on cpu1 %s  (%s)\n' \
    "$name" "${P50[$name]:-?}" "${P90[$name]:-?}" "${P99[$name]:-?}" "${P999[$name]:-?}" "${PMAX[$name]:-?}" "${LERR[$name]}" "${CPUR[$name]}" \
    "${LOTHER[$name]}" "$(sed -n 's/.*\(tls=[^ ]*\) \(cipher=[^ ]*\).*/\1 \2/p' <<<"$out")"
  [ -z "$e" ] && echo "      $out" || true
}

sleep 1
idle0=$(ticks $GW $SC); idleh0=$(ticks $HAP); sleep 5; idle1=$(ticks $GW $SC); idleh1=$(ticks $HAP)
echo "== idle CPU over 5 s: weft gateway+sidecar $(awk -v d=$((idle1 - idle0)) -v hz="$HZ" 'BEGIN{printf "%.1f", d / hz / 5 * 100}')% of a core, haproxy $(awk -v d=$((idleh1 - idleh0)) -v hz="$HZ" 'BEGIN{printf "%.1f", d / hz / 5 * 100}')%"
# ---------------------------------------------------------------- max throughput + CPU/request
echo "== max throughput, ${DUR}s per point, $ROUNDS round(s) alternating (h2load -t1 -c10 -m10, TLS 1.3, ALPN h2)"
echo "   proxy cpu: gateway + sidecar for Weft, edge + in for the two HAProxies (split in brackets), haproxy for the"
echo "   single peer (utime+stime from /proc / requests)"
for round in $(seq 1 "$ROUNDS"); do
  maxrps weft         ${GW_TLS##*:}   $GW $SC
  maxrps haproxy      $HAP_PORT       $HAP
  maxrps haproxy-2hop $HAP2_EDGE_PORT $HAPE $HAPI
  maxrps weft-acclog  ${GWL_TLS##*:}  $GWL $SC
done

# ---------------------------------------------------------------- latency at a fixed rate
echo "== latency at $RATE req/s, open loop, ${DUR}s per point (bench-gateway: 4 TLS h2 connections, from intended send time)"
lat weft         ${GW_TLS##*:}   $GW $SC
lat haproxy      $HAP_PORT       $HAP
lat haproxy-2hop $HAP2_EDGE_PORT $HAPE $HAPI

# ---------------------------------------------------------------- isolation
echo "== isolation: five 2 MB downloads through the Weft gateway, alone and while a client holds 12 x 8 MB unread"
ISO=$(gen python3 "$root/tests/py/attack_suite.py" isolation --port "${GW_HTTP##*:}" --authority "$HOST" \
  --stall-path /iso/8m.bin --download-path /iso/2m.bin 2>"$W/logs/isolation.err") || true
echo "$ISO" >"$W/logs/isolation.json"
iso() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d.get(sys.argv[2], "-"))' "$ISO" "$1" 2>/dev/null || echo -; }
ISO_ALONE=$(iso alone_max_s); ISO_DURING=$(iso during_max_s); ISO_FAILED=$(iso failed)
echo "   slowest download alone ${ISO_ALONE} s, during the stall ${ISO_DURING} s (failed: ${ISO_FAILED})"
if [ "$ISO_ALONE" = - ]; then echo "   (no figure: $(tail -n 3 "$W/logs/isolation.err"))"; fi

# ---------------------------------------------------------------- report
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a+0 > 0 && b+0 > 0) printf "%.2f", a / b; else printf "-" }'; }
percore() { awk -v u="$1" 'BEGIN{ if (u+0 > 0) printf "%.0f", 1e6 / u; else printf "-" }'; }
echo
echo "== results ($(date -u +%Y-%m-%dT%H:%MZ), $(uptime | sed 's/.*load/load/'))"
printf '%-26s %8s %8s %10s %8s %7s %7s %7s %7s %6s\n' path 'max r/s' 'cpu us' 'r/s/core' 'app us' "p50@$RATE" "p99@$RATE" 'cpu@r' 'errors' other
row() { # label key
  printf '%-26s %8s %8s %10s %8s %7s %7s %7s %7s %6s\n' "$1" "${BEST_RPS[$2]:-?}" "${BEST_CPU[$2]:--}" "$(percore "${BEST_CPU[$2]:-}")" \
    "${BEST_APP[$2]:--}" "${P50[$2]:--}" "${P99[$2]:--}" "${CPUR[$2]:--}" "$(( ${ERR[$2]:-0} ))$( [ -n "${LERR[$2]:-}" ] && echo "+${LERR[$2]}" )" "${BEST_FOREIGN[$2]:--}"
}
row "weft (gateway+sidecar)" weft
row "haproxy (one, nbthread 1)" haproxy
row "haproxy edge + in (2-hop)" haproxy-2hop
row "weft, access log on" weft-acclog
echo "(max r/s: best of $ROUNDS h2load rounds; cpu us: proxy CPU microseconds per request in that round (Weft: gateway +"
echo " sidecar; the peers: haproxy, or edge + in); r/s/core: requests per proxy-core-second = 1e6 / cpu us; app us: nginx"
echo " CPU per request; p50/p99 in us at $RATE req/s open loop; cpu@r: proxy CPU per request at that rate; errors: h2load"
echo " failed + non-2xx (+ latency-run errors); other: CPU 1 time taken by processes outside the benchmark in that round)"
echo
pc_w=$(percore "${BEST_CPU[weft]:-}"); pc_h=$(percore "${BEST_CPU[haproxy]:-}"); pc_2=$(percore "${BEST_CPU[haproxy-2hop]:-}")
r_core=$(ratio "$pc_w" "$pc_h"); r_rps=$(ratio "${BEST_RPS[weft]:-}" "${BEST_RPS[haproxy]:-}")
r_core2=$(ratio "$pc_w" "$pc_2"); r_rps2=$(ratio "${BEST_RPS[weft]:-}" "${BEST_RPS[haproxy-2hop]:-}")
r_cpu2=$(ratio "${BEST_CPU[weft]:-}" "${BEST_CPU[haproxy-2hop]:-}")
r_p99=$(ratio "${P99[weft]:-}" "${P99[haproxy]:-}"); r_p99_2=$(ratio "${P99[weft]:-}" "${P99[haproxy-2hop]:-}")
echo "weft / haproxy (one):   max req/s ${r_rps}x, req/s per proxy core ${r_core}x, p50 $(ratio "${P50[weft]:-}" "${P50[haproxy]:-}")x, p99 ${r_p99}x"
echo "weft / haproxy (2-hop): max req/s ${r_rps2}x, req/s per proxy core ${r_core2}x, cpu per request ${r_cpu2}x, p50 $(ratio "${P50[weft]:-}" "${P50[haproxy-2hop]:-}")x, p99 ${r_p99_2}x"
echo "isolation: slowest of five 2 MB downloads alone ${ISO_ALONE} s, while a client stalls 12 x 8 MB ${ISO_DURING} s ($(ratio "$ISO_DURING" "$ISO_ALONE")x; failed: ${ISO_FAILED})"
echo
echo "== goals"
goal() { # text value awk-condition-on-v
  printf '  %-62s %-8s %s\n' "$1" "$2" "$(awk -v v="${2%x}" "BEGIN{ print (v != \"-\" && $3) ? \"met\" : \"MISSED\" }")"
}
goal "gateway+sidecar CPU per request <= the two HAProxies' (weft/2-hop)" "${r_cpu2}x" "v+0 <= 1.0"
goal "  stretch: 1.5x better (weft/2-hop <= 0.67)" "${r_cpu2}x" "v+0 <= 0.667"
goal "req/s per proxy core >= 0.6x one HAProxy's" "${r_core}x" "v+0 >= 0.6"
goal "p99 at $RATE req/s <= 1.5x one HAProxy's" "${r_p99}x" "v+0 <= 1.5"
