#!/usr/bin/env bash
# Data-plane benchmark: direct (client -> app) vs Weft (client -> sidecar -> mTLS tunnel
# -> sidecar -> app) vs an HAProxy pair doing the same job (bench/haproxy-out.cfg, and
# bench/haproxy-in.cfg + bench/haproxy-in-l4.cfg in one process), all measured in one run on loopback, for h1->h1, h2c->h1 (translation) and h2c->h2c
# with a 1 KB response from nginx; plus one bulk TCP stream (iperf3) and sidecar RSS.
#
#   bench/mesh.sh                  # builds release binaries, runs (~6 min), prints the table
#   DUR=5 bench/mesh.sh            # seconds per point (default 10)
#   ROUNDS=5 bench/mesh.sh         # max-throughput and bulk points repeated, interleaved; medians
#   SKIP_BUILD=1 bench/mesh.sh     # use the binaries already in target/release
#   BIN_DIR=DIR SKIP_BUILD=1 ...   # use the binaries in DIR instead (before/after comparisons)
#   QUIET_WAIT=0 bench/mesh.sh     # do not wait for a quiet machine (default: up to 300 s)
#   PHASES=max,bulk bench/mesh.sh  # only some of: lat (latency), rss, max (req/s, CPU), bulk
#   SIDECAR_CPUS=0,1 bench/mesh.sh # sidecars on both CPUs (2 tokio workers), for the scaling factor
#   bench/mesh.sh hold             # set everything up, print the addresses, wait (for profiling)
#
# Pinning: the load generators (wrk, h2load, bench-mesh, iperf3 client) on CPU 0;
# sidecars (unless SIDECAR_CPUS), control plane, nginx, iperf3 server and HAProxy on CPU 1.
# Needs (Debian): wrk nghttp2-client haproxy iperf3 nginx-light openssl curl.
# Uses fixed loopback ports: 8080 8081 5201 (apps), 9180-9192 9443-9446 (HAProxy),
# 19100-19400 (Weft).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
DUR=${DUR:-10}
RATE=${RATE:-2000}
RSS_RATE=${RSS_RATE:-1000}
ROUNDS=${ROUNDS:-1}   # rounds of the max and bulk phases; each figure is the median over them
PHASES=${PHASES:-lat,rss,max,bulk}   # which measurements to run
phase() { [[ ",$PHASES," == *",$1,"* ]]; }
SIDECAR_CPUS=${SIDECAR_CPUS:-1}   # e.g. 0,1: the sidecars get both CPUs (tokio then runs 2 workers)
SIDECAR_WRAP=${SIDECAR_WRAP:-}   # a command the sidecars run under, e.g. "valgrind --tool=callgrind" (with hold)
rel=${BIN_DIR:-$root/target/release}   # BIN_DIR: binaries built elsewhere (e.g. a copy of the last release build)

# ---------------------------------------------------------------- prerequisites
missing=()
for t in wrk h2load haproxy iperf3 nginx openssl curl taskset awk; do
  command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing tools: ${missing[*]}" >&2
  echo "install: apt-get install -y wrk nghttp2-client haproxy iperf3 nginx-light openssl curl util-linux" >&2
  exit 2
fi
[ "$(nproc --all)" -ge 2 ] || { echo "needs 2 CPUs (load generator on 0, servers on 1)" >&2; exit 2; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "== building release binaries"
  cargo build --release --workspace --bins --locked --quiet
fi
for b in weft-cp weftctl weft-sidecar bench-mesh; do
  [ -x "$rel/$b" ] || { echo "$rel/$b missing: cargo build --release --workspace --bins" >&2; exit 2; }
done

for p in 8080 8081 5201 9180 9181 9190 9191 9192 9443 9444 9445 9446 19100 19101 19102 19103 \
  19201 19202 19203 19204 19301 19302 19303 19304; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p on 127.0.0.1 is in use; free it first" >&2
    exit 2
  fi
done

W=$(mktemp -d /tmp/weft-bench.XXXXXX)
pids=()
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$W"/run/haproxy-out.pid "$W"/run/haproxy-in.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] && echo "(kept $W)" || rm -rf "$W"
}
trap cleanup EXIT
trap "exit 130" INT TERM   # runs cleanup through the EXIT trap (and ends `hold`)
mkdir -p "$W/run" "$W/certs" "$W/nginx" "$W/logs"
srv() { taskset -c 1 "$@"; }   # servers: CPU 1 (background ones call taskset directly, so \$! is the server)
gen() { taskset -c 0 "$@"; }   # load generators: CPU 0
wait_tcp() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on $1:$2" >&2; return 1; }

# Other work on the machine shows up in the tails: wait (up to QUIET_WAIT s) for the
# 1-minute load average to drop under QUIET_LOAD before starting.
QUIET_LOAD=${QUIET_LOAD:-1.0}; QUIET_WAIT=${QUIET_WAIT:-300}
for _ in $(seq 1 "$((QUIET_WAIT / 5))"); do
  awk -v l="$QUIET_LOAD" '{ exit !($1 < l) }' /proc/loadavg && break
  [ "${waited:-0}" = 1 ] || { echo "== waiting for load average < $QUIET_LOAD (now $(cut -d' ' -f1 /proc/loadavg))"; waited=1; }
  sleep 5
done
echo "== machine: $(nproc --all) CPUs, $(uptime | sed 's/.*load/load/')"

# ---------------------------------------------------------------- apps: nginx (1 KB body), iperf3
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
  server { listen 127.0.0.1:8080; location / { return 200 "$body"; } }
  server { listen 127.0.0.1:8081 http2; location / { return 200 "$body"; } }
}
EOF
taskset -c 1 nginx -p "$W/nginx" -c "$W/nginx/nginx.conf" >"$W/logs/nginx.out" 2>&1 &
pids+=($!)
taskset -c 1 iperf3 -s -B 127.0.0.1 -p 5201 >"$W/logs/iperf3.out" 2>&1 &
pids+=($!)
wait_tcp 127.0.0.1 8080; wait_tcp 127.0.0.1 8081; wait_tcp 127.0.0.1 5201
[ "$(curl -s http://127.0.0.1:8080/ | wc -c)" = 1024 ] || { echo "nginx h1 does not serve 1 KB" >&2; exit 1; }
[ "$(curl -s --http2-prior-knowledge http://127.0.0.1:8081/ | wc -c)" = 1024 ] || { echo "nginx h2c does not serve 1 KB" >&2; exit 1; }

# ---------------------------------------------------------------- Weft: control plane + 4 sidecars
export RUST_LOG=${RUST_LOG:-info}
taskset -c 1 "$rel/weft-cp" --data-dir "$W/cp" --listen 127.0.0.1:19100 --http 127.0.0.1:19400 >"$W/logs/cp.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do
  [ -f "$W/cp/admin.token" ] && curl -fsS http://127.0.0.1:19400/healthz >/dev/null 2>&1 && break
  sleep 0.1
done
ctl() { "$rel/weftctl" --cp https://127.0.0.1:19100 --token "$(cat "$W/cp/admin.token")" --ca "$W/cp/ca.pem" "$@"; }
ctl service create bench-h1 --protocol http --port 19101 >/dev/null
ctl service create bench-h2 --protocol http2 --port 19102 >/dev/null
ctl service create bench-tcp --protocol tcp --port 19103 >/dev/null
ctl service create bench-client --protocol tcp >/dev/null
token() { ctl -o json token create --service "$1" | tr -d ' \n' | sed -n 's/.*"token":"\([^"]*\)".*/\1/p'; }
# name app inbound-port admin-port outbound-ip
sidecar() {
  local tok; tok=$(token "$1")
  taskset -c "$SIDECAR_CPUS" $SIDECAR_WRAP "$rel/weft-sidecar" run --cp https://127.0.0.1:19100 --token "$tok" --service "$1" \
    --app "$2" --region bench --inbound "127.0.0.1:$3" --admin "127.0.0.1:$4" \
    --outbound-ip "$5" --state-dir "$W/state-$1" >"$W/logs/$1.log" 2>&1 &
  pids+=($!)
  eval "pid_${1//-/_}=$!"
}
sidecar bench-h1 127.0.0.1:8080 19201 19301 127.0.19.1
sidecar bench-h2 127.0.0.1:8081 19202 19302 127.0.19.2
sidecar bench-tcp 127.0.0.1:5201 19203 19303 127.0.19.3
sidecar bench-client 127.0.0.1:8080 19204 19304 127.0.19.4
for a in 19301 19302 19303 19304; do
  for _ in $(seq 1 1200); do curl -fs "http://127.0.0.1:$a/ready" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fs "http://127.0.0.1:$a/ready" >/dev/null || { echo "sidecar with admin :$a not ready" >&2; tail -20 "$W"/logs/*.log >&2; exit 1; }
done
C=127.0.19.4   # the client sidecar's outbound listeners
for _ in $(seq 1 150); do
  [ "$(curl -s --max-time 2 "http://$C:19101/" | wc -c)" = 1024 ] \
    && [ "$(curl -s --max-time 2 --http2-prior-knowledge "http://$C:19101/" | wc -c)" = 1024 ] \
    && [ "$(curl -s --max-time 2 --http2-prior-knowledge "http://$C:19102/" | wc -c)" = 1024 ] && break
  sleep 0.2
done
[ "$(curl -s --http2-prior-knowledge "http://$C:19102/" | wc -c)" = 1024 ] || { echo "mesh paths do not answer" >&2; tail -20 "$W"/logs/bench-*.log >&2; exit 1; }

# ---------------------------------------------------------------- HAProxy pair
# A mesh CA, the inbound's server certificate and the outbound's client certificate,
# ECDSA P-256 like Weft's workload certificates.
(
  cd "$W/certs"
  openssl ecparam -name prime256v1 -genkey -noout -out mesh-ca.key
  openssl req -x509 -new -key mesh-ca.key -sha256 -days 30 -subj "/CN=bench-mesh-ca" -out mesh-ca.crt
  for who in inbound client; do
    openssl ecparam -name prime256v1 -genkey -noout -out "$who.key"
    openssl req -new -key "$who.key" -subj "/CN=$who.mesh.test" -out "$who.csr"
    usage=$([ "$who" = inbound ] && echo serverAuth || echo clientAuth)
    printf "subjectAltName=DNS:$who.mesh.test\nextendedKeyUsage=$usage\n" > "$who.ext"
    openssl x509 -req -in "$who.csr" -CA mesh-ca.crt -CAkey mesh-ca.key -CAcreateserial -days 30 -sha256 -extfile "$who.ext" -out "$who.crt"
    cat "$who.crt" "$who.key" > "$who.pem"
  done
) >"$W/logs/certs.log" 2>&1
export BENCH_CERTS="$W/certs" BENCH_RUN="$W/run" BENCH_IN_PORT=9443 BENCH_APP=127.0.0.1:8080 \
  BENCH_APP_H2C=127.0.0.1:8081 BENCH_APP_BULK=127.0.0.1:5201
srv haproxy -f bench/haproxy-in.cfg -f bench/haproxy-in-l4.cfg >"$W/logs/haproxy-in.log" 2>&1
srv haproxy -f bench/haproxy-out.cfg >"$W/logs/haproxy-out.log" 2>&1
wait_tcp 127.0.0.1 9180; wait_tcp 127.0.0.1 9443
for p in 9180 9190; do
  [ "$(curl -s --max-time 5 "http://127.0.0.1:$p/" | wc -c)" = 1024 ] || { echo "HAProxy :$p does not answer" >&2; exit 1; }
done
for p in 9181 9191; do
  [ "$(curl -s --max-time 5 --http2-prior-knowledge "http://127.0.0.1:$p/" | wc -c)" = 1024 ] || { echo "HAProxy :$p does not answer" >&2; exit 1; }
done
hap_pids="$(cat "$W/run/haproxy-out.pid") $(cat "$W/run/haproxy-in.pid")"

# ---------------------------------------------------------------- helpers
HZ=$(getconf CLK_TCK)
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
# median of the numbers given ("-" when none; the lower middle one of an even count)
median() { printf '%s\n' "$@" | awk '/^[0-9.]+$/' | sort -g | awk '{v[NR]=$1} END{ if (NR == 0) print "-"; else print v[int((NR + 1) / 2)] }'; }
faults() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $10}' "/proc/$p/stat"))); done; echo $t; }
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/{print $2}' "/proc/$1/status"; }
kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; }
declare -A RPS CPU CPUR P50 P99 ERR GBPS ALL_RPS ALL_CPU ALL_GBPS FPM
rss_max_cl=0; rss_max_h1=0; PEAK_CL=-; PEAK_H1=-; PEAK_TCP=-

# max throughput: name proto addr pids...  (proto h1: wrk -t1 -c50; h2c: h2load -t1 -c10 -m10)
maxrps() {
  local name=$1 proto=$2 addr=$3; shift 3
  local t0 t1 out reqs rps errs
  t0=$(ticks "$@" 2>/dev/null || echo 0)
  if [ "$proto" = h1 ]; then
    out=$(gen wrk -t1 -c50 -d"${DUR}s" "http://$addr/" 2>&1)
    reqs=$(awk '/requests in/{print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/{printf "%.0f", $2}' <<<"$out")
    errs=$(awk '/Non-2xx/{n+=$NF} /Socket errors/{gsub(/,/,""); n+=$4+$6+$8+$10} END{print n+0}' <<<"$out")
  else
    out=$(gen h2load -t1 -c10 -m10 -D "$DUR" "http://$addr/" 2>&1)
    reqs=$(awk '/^requests:/{print $8}' <<<"$out")
    rps=$(awk '/^finished in/{gsub(/,/,""); printf "%.0f", $4}' <<<"$out")
    errs=$(awk '/^requests:/{print $10+$12}' <<<"$out")
  fi
  t1=$(ticks "$@" 2>/dev/null || echo 0)
  echo "$out" >"$W/logs/max-$name.txt"
  RPS[$name]=${rps:-0}; ERR[$name]=${errs:-?}
  if [ $# -gt 0 ] && [ "${reqs:-0}" -gt 0 ]; then
    CPU[$name]=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v n="$reqs" 'BEGIN{printf "%.1f", d / hz * 1e6 / n}')
  else
    CPU[$name]=-
  fi
  printf '   %-16s %8s req/s  cpu %6s us/req  errors %s\n' "$name" "${RPS[$name]}" "${CPU[$name]}" "${ERR[$name]}"
  ALL_RPS[$name]+=" ${RPS[$name]}"; ALL_CPU[$name]+=" ${CPU[$name]}"
}
# fixed-rate latency: name addr proto pids...  (CPU of pids over the run, per request sent)
lat() {
  local name=$1 addr=$2 proto=$3 out t0 t1; shift 3
  t0=$(ticks "$@")
  out=$(gen "$rel/bench-mesh" --addr "$addr" --proto "$proto" --rate "$RATE" --duration "$DUR" --warmup 1 \
    --conns "$([ "$proto" = h1 ] && echo 16 || echo 4)" 2>&1) || true
  t1=$(ticks "$@")
  echo "$out" >"$W/logs/lat-$name.txt"
  P50[$name]=$(kv p50_us "$out"); P99[$name]=$(kv p99_us "$out")
  if [ $# -gt 0 ]; then
    CPUR[$name]=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v r="$RATE" -v w="$DUR" 'BEGIN{printf "%.1f", d / hz * 1e6 / (r * (w + 1))}')
  else
    CPUR[$name]=-
  fi
  local e; e=$(kv err "$out")
  printf '   %-16s p50 %6s us  p99 %6s us  p99.9 %6s us  max %6s us  err %s  cpu %s us/req\n' "$name" "${P50[$name]:-?}" "${P99[$name]:-?}" "$(kv p999_us "$out")" "$(kv max_us "$out")" "${e:-?}" "${CPUR[$name]}"
  [ -z "$e" ] && echo "      $out" || true
}
bulk() {
  # iperf3 -s runs one test at a time, and the sidecar's app probe (at start, then every
  # 30 s: an HTTP/2 preface, then OPTIONS, each waiting up to 2 s for an answer iperf3
  # never gives) holds that slot while it waits: a test refused then is tried again.
  # name host port pids...: the proxies' page faults are counted per MB carried (a
  # proxy that hands freed buffers back to the kernel faults every page in again).
  local name=$1 host=$2 port=$3 out f0 f1 mb; shift 3
  f0=$(faults "$@")
  out=$(gen iperf3 -c "$host" -p "$port" -t "$DUR" -f g 2>&1) || { sleep 2; f0=$(faults "$@"); out=$(gen iperf3 -c "$host" -p "$port" -t "$DUR" -f g 2>&1) || true; }
  f1=$(faults "$@")
  echo "$out" >"$W/logs/bulk-$name.txt"
  GBPS[$name]=$(awk '/receiver/{for(i=1;i<=NF;i++) if($i=="Gbits/sec") print $(i-1)}' <<<"$out" | tail -1)
  mb=$(awk '/receiver/{for(i=1;i<=NF;i++) if($i=="GBytes") print $(i-1) * 1024; else if($i=="MBytes") print $(i-1)}' <<<"$out" | tail -1)
  FPM[$name]=$([ $# -gt 0 ] && awk -v f=$((f1 - f0)) -v m="${mb:-0}" 'BEGIN{ if (m > 0) printf "%.1f", f / m; else printf "-" }' || echo -)
  printf '   %-16s %6s Gbit/s  page faults %s per MB\n' "$name" "${GBPS[$name]:-?}" "${FPM[$name]}"
  ALL_GBPS[$name]+=" ${GBPS[$name]:-}"
  sleep 1
}

SC_H1=$pid_bench_h1; SC_H2=$pid_bench_h2; SC_TCP=$pid_bench_tcp; SC_CL=$pid_bench_client
if [ "${1:-}" = hold ]; then
  echo "== holding (Ctrl-C stops): client sidecar pid $SC_CL, outbound $C:19101 (http, nginx h1),"
  echo "   $C:19102 (http2, nginx h2c), $C:19103 (tcp, iperf3 -s); server sidecars: h1 $SC_H1, h2 $SC_H2,"
  echo "   tcp $SC_TCP; HAProxy chain pids $hap_pids (ports as in bench/haproxy-out.cfg); logs in $W/logs"
  while sleep 1; do :; done
fi
sleep 2
IDLE_CL=$(rss_kib "$SC_CL"); IDLE_H1=$(rss_kib "$SC_H1")
echo "== idle RSS: client sidecar ${IDLE_CL} KiB, server sidecar ${IDLE_H1} KiB"

# ---------------------------------------------------------------- latency at a fixed rate
if phase lat; then
echo "== latency at $RATE req/s, open loop, ${DUR}s per point (bench-mesh, from intended send time)"
lat direct-h1    127.0.0.1:8080 h1
lat weft-h1      $C:19101       h1  "$SC_CL" "$SC_H1"
lat hap-l4-h1    127.0.0.1:9190 h1  $hap_pids
lat hap-l7-h1    127.0.0.1:9180 h1  $hap_pids
lat direct-h2c   127.0.0.1:8081 h2c
lat weft-h2c-h1  $C:19101       h2c "$SC_CL" "$SC_H1"
lat hap-h2c-h1   127.0.0.1:9181 h2c $hap_pids
lat weft-h2c-h2c $C:19102       h2c "$SC_CL" "$SC_H2"
lat hap-h2c-h2c  127.0.0.1:9191 h2c $hap_pids
fi

# ---------------------------------------------------------------- RSS at 1,000 req/s
if phase rss; then
echo "== RSS at $RSS_RATE req/s (h1 through the mesh, ${DUR}s)"
rss_max_cl=0; rss_max_h1=0
taskset -c 0 "$rel/bench-mesh" --addr "$C:19101" --proto h1 --rate "$RSS_RATE" --duration "$DUR" --warmup 1 >"$W/logs/rss-load.txt" 2>&1 &
loadpid=$!
while kill -0 "$loadpid" 2>/dev/null; do
  a=$(rss_kib "$SC_CL"); b=$(rss_kib "$SC_H1")
  [ "$a" -gt "$rss_max_cl" ] && rss_max_cl=$a; [ "$b" -gt "$rss_max_h1" ] && rss_max_h1=$b
  sleep 0.25
done
wait "$loadpid" || true
echo "   client sidecar max ${rss_max_cl} KiB, server sidecar max ${rss_max_h1} KiB  ($(cat "$W/logs/rss-load.txt"))"
fi

# ---------------------------------------------------------------- max throughput + CPU/request
if phase max; then
for round in $(seq 1 "$ROUNDS"); do
if [ "$ROUNDS" -gt 1 ]; then echo "   -- round $round of $ROUNDS"; fi
echo "== max throughput, ${DUR}s per point (h1: wrk -t1 -c50; h2c: h2load -t1 -c10 -m10); CPU = both proxies"
maxrps direct-h1    h1  127.0.0.1:8080
maxrps weft-h1      h1  $C:19101 "$SC_CL" "$SC_H1"
maxrps hap-l4-h1    h1  127.0.0.1:9190 $hap_pids
maxrps hap-l7-h1    h1  127.0.0.1:9180 $hap_pids
maxrps direct-h2c   h2c 127.0.0.1:8081
maxrps weft-h2c-h1  h2c $C:19101 "$SC_CL" "$SC_H1"
maxrps hap-h2c-h1   h2c 127.0.0.1:9181 $hap_pids
maxrps weft-h2c-h2c h2c $C:19102 "$SC_CL" "$SC_H2"
maxrps hap-h2c-h2c  h2c 127.0.0.1:9191 $hap_pids
done
for k in "${!ALL_RPS[@]}"; do RPS[$k]=$(median ${ALL_RPS[$k]}); CPU[$k]=$(median ${ALL_CPU[$k]}); done
if [ "$ROUNDS" -gt 1 ]; then echo "   (the report below takes the median of the $ROUNDS rounds for each point)"; fi
fi

# ---------------------------------------------------------------- one bulk stream
if phase bulk; then
for round in $(seq 1 "$ROUNDS"); do
echo "== one bulk TCP stream (iperf3, ${DUR}s)"
bulk direct  127.0.0.1 5201
bulk weft    $C        19103 "$SC_CL" "$SC_TCP"
bulk hap-l4  127.0.0.1 9192 $hap_pids
done
for k in "${!ALL_GBPS[@]}"; do GBPS[$k]=$(median ${ALL_GBPS[$k]}); done
PEAK_CL=$(hwm_kib "$SC_CL"); PEAK_H1=$(hwm_kib "$SC_H1"); PEAK_TCP=$(hwm_kib "$SC_TCP")
fi

# ---------------------------------------------------------------- report
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a+0 > 0 && b+0 > 0) printf "%.2f", a / b; else printf "-" }'; }
diff_() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a != "" && b != "") printf "%d", a - b; else printf "-" }'; }
echo
echo "== results ($(date -u +%Y-%m-%dT%H:%MZ), $(uptime | sed 's/.*load/load/'))"
printf '%-8s %-11s %7s %7s %7s %6s %6s %6s %6s %9s %10s\n' path via req/s us-cpu cpu@2k p50 p99 +p50 +p99 rps/peer rps/direct
row() { # label via key direct-key peer-key
  local k=$3 d=$4 pk=$5
  printf '%-8s %-11s %7s %7s %7s %6s %6s %6s %6s %9s %10s\n' "$1" "$2" "${RPS[$k]:-?}" "${CPU[$k]:--}" "${CPUR[$k]:--}" \
    "${P50[$k]:-?}" "${P99[$k]:-?}" "$(diff_ "${P50[$k]:-}" "${P50[$d]:-}")" "$(diff_ "${P99[$k]:-}" "${P99[$d]:-}")" \
    "$([ -n "$pk" ] && ratio "${RPS[$k]:-}" "${RPS[$pk]:-}" || echo -)" "$(ratio "${RPS[$k]:-}" "${RPS[$d]:-}")"
}
row h1            direct       direct-h1    direct-h1  ""
row h1-h1         weft         weft-h1      direct-h1  hap-l4-h1
row h1-h1         haproxy-L4   hap-l4-h1    direct-h1  ""
row h1-h1         haproxy-L7   hap-l7-h1    direct-h1  ""
row h2c           direct       direct-h2c   direct-h2c ""
row h2c-h1        weft         weft-h2c-h1  direct-h2c hap-h2c-h1
row h2c-h1        haproxy-L7   hap-h2c-h1   direct-h2c ""
row h2c-h2c       weft         weft-h2c-h2c direct-h2c hap-h2c-h2c
row h2c-h2c       haproxy-L4   hap-h2c-h2c  direct-h2c ""
echo "(us-cpu: CPU microseconds per request of the two proxies together at max throughput; cpu@2k: same at $RATE req/s;"
echo " p50/p99 in us at $RATE req/s open loop; +p50/+p99: added over direct with the same client protocol;"
echo " rps/peer: Weft over the HAProxy chain doing the same job (L4 tunnel for h1→h1 and h2c→h2c, L7 for h2c→h1))"
echo
printf 'bulk (1 stream) Gbit/s: direct %s, weft %s, haproxy-L4 %s  (weft/direct %s, weft/haproxy %s; page faults per MB, last round: weft %s, haproxy %s)\n' \
  "${GBPS[direct]:-?}" "${GBPS[weft]:-?}" "${GBPS[hap-l4]:-?}" "$(ratio "${GBPS[weft]:-}" "${GBPS[direct]:-}")" "$(ratio "${GBPS[weft]:-}" "${GBPS[hap-l4]:-}")" "${FPM[weft]:--}" "${FPM[hap-l4]:--}"
printf 'sidecar RSS KiB: idle client %s server %s; at %s req/s client %s server %s; peak after the run client %s server %s bulk-server %s\n' \
  "$IDLE_CL" "$IDLE_H1" "$RSS_RATE" "$rss_max_cl" "$rss_max_h1" "$PEAK_CL" "$PEAK_H1" "$PEAK_TCP"
echo
echo "== goals (ratios to the HAProxy chain measured in this run)"
goal() { printf '  %-60s %-12s %s\n' "$1" "$2" "$3"; }
worst_p50=$(printf '%s\n' "$(diff_ "${P50[weft-h1]:-}" "${P50[direct-h1]:-}")" "$(diff_ "${P50[weft-h2c-h1]:-}" "${P50[direct-h2c]:-}")" "$(diff_ "${P50[weft-h2c-h2c]:-}" "${P50[direct-h2c]:-}")" | sort -g | tail -1)
worst_p99=$(printf '%s\n' "$(diff_ "${P99[weft-h1]:-}" "${P99[direct-h1]:-}")" "$(diff_ "${P99[weft-h2c-h1]:-}" "${P99[direct-h2c]:-}")" "$(diff_ "${P99[weft-h2c-h2c]:-}" "${P99[direct-h2c]:-}")" | sort -g | tail -1)
ok() { awk -v v="$1" -v g="$2" 'BEGIN{ print (v != "" && v != "-" && v+0 <= g+0) ? "met" : "MISSED" }'; }
okge() { awk -v v="$1" -v g="$2" 'BEGIN{ print (v != "" && v != "-" && v+0 >= g+0) ? "met" : "MISSED" }'; }
# req/s per core = 1 / CPU per request, so Weft's over the peer's is the peer's CPU over Weft's.
cpu_l7=$(ratio "${CPU[weft-h2c-h1]:-}" "${CPU[hap-h2c-h1]:-}")
core_h1=$(ratio "${CPU[hap-l4-h1]:-}" "${CPU[weft-h1]:-}")
core_h2=$(ratio "${CPU[hap-h2c-h2c]:-}" "${CPU[weft-h2c-h2c]:-}")
bulk_r=$(ratio "${GBPS[weft]:-}" "${GBPS[hap-l4]:-}")
goal "h2c->h1: CPU per request <= HAProxy L7's (stretch 0.7x)" "${cpu_l7}x" "$(ok "$cpu_l7" 1)"
goal "h1->h1 (spliced): req/s per core >= 1.5x HAProxy L4's" "${core_h1}x" "$(okge "$core_h1" 1.5)"
goal "h2c->h2c (spliced): req/s per core >= 1.5x HAProxy L4's" "${core_h2}x" "$(okge "$core_h2" 1.5)"
goal "one bulk stream >= 1.25x HAProxy L4's" "${bulk_r}x" "$(okge "$bulk_r" 1.25)"
goal "one bulk stream >= 6 Gbit/s" "${GBPS[weft]:-?} Gbit/s" "$(okge "${GBPS[weft]:-0}" 6)"
goal "added p50 at $RATE req/s <= 100 us (worst path)" "${worst_p50} us" "$(ok "$worst_p50" 100)"
quiet=$(awk -v a="${P99[direct-h1]:-0}" -v b="${P99[direct-h2c]:-0}" 'BEGIN{ print (a < 1000 && b < 1000) ? "" : " (direct p99 over 1 ms: machine busy, tails not meaningful)" }')
goal "added p99 at $RATE req/s <= 250 us (worst path)" "${worst_p99} us" "$(ok "$worst_p99" 250)$quiet"
mb() { awk -v k="$1" 'BEGIN{ printf "%.1f", k * 1024 / 1e6 }'; }
idle_mb=$(mb $(( IDLE_CL > IDLE_H1 ? IDLE_CL : IDLE_H1 ))); load_mb=$(mb $(( rss_max_cl > rss_max_h1 ? rss_max_cl : rss_max_h1 )))
goal "sidecar idle RSS < 10 MB (larger of the two)" "$idle_mb MB" "$(awk -v v="$idle_mb" 'BEGIN{print v < 10 ? "met" : "MISSED"}')"
goal "sidecar RSS at $RSS_RATE req/s < 15 MB (larger of the two)" "$load_mb MB" "$(awk -v v="$load_mb" 'BEGIN{print v < 15 ? "met" : "MISSED"}')"
