#!/usr/bin/env bash
# The compose demo as a test: brings the two regions up from the locally built binaries,
# runs the guided tour (every step checks itself), then injects faults under continuous
# traffic and reports, for each, the count of failed requests and the longest run of
# them (in requests and in seconds):
#   1. the eu web app stops: eu traffic fails over to us, and comes back to eu;
#   2. the wan network is cut: traffic inside each region goes on, and a cross-region
#      gRPC call fails fast or fails over to eu (it never waits for its deadline);
#   3. the leader control plane replica is killed (SIGKILL): traffic goes on, the other
#      replica leads within seconds, takes changes, and every dataplane fails over to it;
#   4. the control plane stops (both replicas): traffic goes on, and a sidecar restarts
#      from its state;
#   5. everything is back: every dataplane connected, healthy and in sync.
# Exits non-zero on the first broken expectation. Tears the demo down at the end unless
# WEFT_KEEP=1. WEFT_SKIP_CARGO=1 reuses binaries already built (as .ci/run does).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# Failed requests tolerated per target and phase. A request in flight at the very
# moment a process is stopped can be lost where the client's TCP connection itself
# ends; anything beyond that is a bug.
MAX_FAILED=${WEFT_MAX_FAILED:-2}
dataplanes=10

cleanup() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    echo "== FAILED; state of the demo for the record:"
    ctl dataplane list 2>&1 || true
    ctl cp status 2>&1 || true
    for c in weft-cp-1 weft-cp-2 weft-eu-gateway weft-us-gateway weft-eu-ingress weft-us-ingress weft-eu-web-sidecar; do
      echo "-- $c (last lines)"
      docker logs --tail 15 "$c" 2>&1 | cut -c1-300 || true
    done
  fi
  [ -n "${traffic_pid:-}" ] && kill "$traffic_pid" 2>/dev/null || true
  # The wan network may still be cut.
  wan_connect >/dev/null 2>&1 || true
  if [ "${WEFT_KEEP:-}" != 1 ]; then
    "$compose_dir/down.sh" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT

wan="${COMPOSE_PROJECT_NAME}_wan"
wan_members=("${cp_replicas[@]}" eu-gateway us-gateway eu-ingress us-ingress)
wan_disconnect() {
  for s in "${wan_members[@]}"; do docker network disconnect "$wan" "weft-$s"; done
}
wan_connect() {
  for s in "${wan_members[@]}"; do
    [ "$(docker inspect -f '{{.State.Running}}' "weft-$s" 2>/dev/null)" = true ] || continue
    docker network inspect "$wan" -f '{{range .Containers}}{{.Name}} {{end}}' | grep -qw "weft-$s" ||
      docker network connect --alias "$s" "$wan" "weft-$s"
  done
}

# traffic_start NAME=URL...: continuous requests until traffic_stop.
traffic_start() {
  local targets=()
  for t in "$@"; do targets+=(--target "$t"); done
  python3 "$compose_dir/traffic.py" "${targets[@]}" >"$work/traffic.json" &
  traffic_pid=$!
  sleep 2
}
# traffic_stop PHASE: stops the traffic, records and checks its counts.
traffic_stop() {
  kill -TERM "$traffic_pid"
  wait "$traffic_pid"
  traffic_pid=
  local phase=$1
  python3 - "$phase" "$MAX_FAILED" "$work/traffic.json" "$work/summary" <<'PY' || exit 1
import json, sys
phase, limit, path, summary = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
data = json.load(open(path))
def run(r):
    longest = r["longest_failed_run"]
    return "longest run %d (%.1f s)" % (longest["requests"], longest["seconds"])
with open(summary, "a") as f:
    counts = ", ".join("%s %d failed of %d, %s" % (k, v["failed"], v["ok"] + v["failed"], run(v)) for k, v in data.items())
    f.write("%s: %s\n" % (phase, counts))
bad = False
for name, r in data.items():
    print(f"   {phase:<28} {name:<8} ok {r['ok']:>5}  failed {r['failed']:>3}  {run(r)}  answered by {r['apps']}")
    for e in r["errors"]:
        print(f"      error: {e}")
    if r["ok"] == 0:
        print(f"   {name}: no request succeeded during '{phase}'")
        bad = True
    if r["failed"] > limit:
        print(f"   {name}: {r['failed']} failed requests during '{phase}' (at most {limit} allowed)")
        bad = True
sys.exit(1 if bad else 0)
PY
}
# Answered-by checks through a gateway.
app_of() { gw_curl "$1" https "$2" /test | json_get app; }
app_is() { [ "$(app_of "$1" "$2" 2>/dev/null)" = "$3" ]; }
grpc_us() {
  python3 "$repo_root/tests/py/grpc_client.py" --target "127.0.0.1:$(https_port eu)" \
    --tls-ca "$run_dir/eu-gateway.pem" --server-name grpc-us.localhost \
    --authority grpc-us.localhost unary
}
# A unary call to grpc-us.localhost (prefers region us) answered by the us app.
grpc_us_in_us() { [ "$(grpc_us 2>/dev/null | json_get cases unary reply app)" = us-echo ]; }

work=$(mktemp -d)
started=$SECONDS

log "bringing the demo up"
"$compose_dir/down.sh" >/dev/null 2>&1 || true
"$compose_dir/up.sh" | tail -n 3

log "the guided tour"
"$compose_dir/demo.sh" --no-pause

eu_web="eu-web=$(gw_url eu https web.localhost /t),$run_dir/eu-gateway.pem"
us_web="us-web=$(gw_url us https web.localhost /t),$run_dir/us-gateway.pem"
eu_api="eu-api=$(gw_url eu http api.localhost /t)"
us_api="us-api=$(gw_url us http api.localhost /t)"

log "fault 1: the eu web app stops, then starts again"
traffic_start "$eu_web" "$us_web"
docker stop weft-eu-web-app >/dev/null
eventually 15 app_is eu web.localhost us-web || die "eu traffic did not fail over to us"
sleep 3
docker start weft-eu-web-app >/dev/null
eventually 60 app_is eu web.localhost eu-web || die "eu traffic did not come back to the eu app"
sleep 2
traffic_stop "eu app stopped and back"
grep -q '"us-web"' "$work/traffic.json" || die "no eu request was answered by us during the failover"

log "fault 2: the wan network is cut"
traffic_start "$eu_web" "$us_web" "$eu_api" "$us_api"
wan_disconnect
sleep 3
# The eu gateway's pooled connection to the us ingress is cut silently: the call must
# fail fast or fail over to the eu app, never wait for its 10 s deadline. (The time
# includes the Python client's start.)
call_started=$(date +%s%N)
if out=$(grpc_us 2>&1); then
  answered=$(json_get cases unary reply app <<<"$out")
  [ "$answered" = eu-echo ] || die "a call to the us region with the wan cut was answered by '$answered': $out"
  verdict="failed over to $answered"
else
  verdict="failed: $(json_get cases unary error <<<"$out")"
fi
took=$(( ($(date +%s%N) - call_started) / 1000000 ))
echo "   eu -> us with the wan cut: $verdict, in ${took} ms"
echo "wan cut: a call eu -> us $verdict in ${took} ms" >>"$work/summary"
[ "$took" -lt 6000 ] || die "the cross-region call took ${took} ms with the wan cut: it must fail fast or fail over, not wait for its deadline"
sleep 3
wan_connect
traffic_stop "wan cut"
eventually 30 grpc_us_in_us || die "eu -> us was not answered by the us app again once the wan was back"
echo "   eu -> us reaches the us app again with the wan back"

# The replica `cp status` names as leader, and the epoch: "cp-1 7".
leader_now() {
  ctl cp status -o json | python3 -c '
import json, sys
s = json.load(sys.stdin)
lead = [r["address"].split(":")[0] for r in s["replicas"] if r["leader"]]
print(lead[0] if lead else "-", s["epoch"])'
}
led_by_other() { # replica-that-died old-epoch
  local now
  now=$(leader_now 2>/dev/null) || return 1
  set -- "$1" "$2" $now
  [ "$3" != "-" ] && [ "$3" != "$1" ] && [ "$4" -gt "$2" ]
}

log "fault 3: the leader control plane replica is killed (SIGKILL)"
read -r leader epoch < <(leader_now)
[ "$leader" != "-" ] || die "no control plane replica leads"
echo "   $leader leads at epoch $epoch"
traffic_start "$eu_web" "$us_web" "$eu_api" "$us_api"
killed_at=$(date +%s%N)
docker kill weft-"$leader" >/dev/null
eventually 15 led_by_other "$leader" "$epoch" || die "no other replica took over from $leader"
took=$(( ($(date +%s%N) - killed_at) / 1000000 ))
read -r new_leader new_epoch < <(leader_now)
echo "   $new_leader leads at epoch $new_epoch, ${took} ms after the kill"
echo "leader killed: $new_leader took over at epoch $new_epoch after ${took} ms" >>"$work/summary"
# A change through the survivor reaches every dataplane, which failed over to it.
ctl service create failover-check --protocol tcp >/dev/null
"$compose_dir/wait-sync.sh" "$dataplanes" 60
ctl service delete failover-check >/dev/null
traffic_stop "leader replica killed"
docker start weft-"$leader" >/dev/null

log "fault 4: the control plane stops; a sidecar restarts meanwhile"
traffic_start "$eu_web" "$us_web" "$eu_api" "$us_api"
docker stop weft-cp-1 weft-cp-2 >/dev/null
sleep 3
docker restart weft-eu-api-sidecar >/dev/null
# The restarted sidecar serves from its state directory (certificate and config) with
# no control plane; the gateway, which could not reach it meanwhile, probes it and sends
# eu traffic to it again as soon as it answers.
eventually 60 app_is eu api.localhost eu-api || die "the restarted eu api sidecar does not serve without the control plane"
sleep 2
traffic_stop "cp down, sidecar restarted"

log "fault 5: the control plane is back; everything converges"
docker start weft-cp-1 weft-cp-2 >/dev/null
"$compose_dir/wait-sync.sh" "$dataplanes" 90
unhealthy=$(ctl dataplane list -o json | python3 -c '
import json, sys
print(" ".join(p["id"] for p in json.load(sys.stdin) if not (p["connected"] and p["healthy"] and p["in_sync"])))')
[ -z "$unhealthy" ] || die "dataplanes not connected, healthy and in sync: $unhealthy"
traffic_start "$eu_web" "$us_web" "$eu_api" "$us_api"
sleep 3
traffic_stop "converged"
eventually 20 grpc_us_in_us || die "eu -> us gRPC does not reach the us app after convergence"

log "summary (failed requests per target, $((SECONDS - started)) s in all)"
sed 's/^/   /' "$work/summary"
log "compose test passed"
