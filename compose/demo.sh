#!/usr/bin/env bash
# A guided tour of the running two-region demo (start it first with compose/up.sh).
# Each step prints what it runs and what to look at, and checks that the mesh behaved as
# described: the tour stops with an error at the first step that does not.
#   compose/demo.sh [--no-pause]   (it never waits for Enter when stdin is not a terminal)
# The gRPC step uses the Python client in tests/py (python3 -m pip install -r
# tests/py/requirements.txt).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

pause=1
[ "${1:-}" = --no-pause ] && pause=0
[ -t 0 ] || pause=0
[ -f "$run_dir/eu-gateway.pem" ] || die "the demo is not running: start it with compose/up.sh"

# summary < JSON: what the demo app reports it received, in a few lines.
summary() {
  python3 -c '
import json, sys
r = json.load(sys.stdin)
print("   the app reports:", json.dumps({k: r.get(k) for k in ("app", "version", "method", "path", "host")}))
hdrs = r.get("headers", {})
print("   headers it saw:", ", ".join(sorted(hdrs)))'
}
step() {
  printf '\n\033[1m## %s\033[0m\n' "$*"
}
next() {
  if [ "$pause" = 1 ]; then
    read -r -p "(Enter for the next step) " _
  fi
}
show() { # prints a command, then runs it
  printf '$ %s\n' "$*"
  "$@"
}
expect() { # what actual
  if [ "$2" != "$3" ]; then
    die "$1: got '$3', expected '$2'"
  fi
  printf '   ok: %s = %s\n' "$1" "$3"
}

# Undo what an interrupted earlier tour may have left behind.
[ "$(ctl service get web -o json 2>/dev/null | json_get protocol)" = http ] ||
  ctl service set-protocol web http >/dev/null
if [ "$(docker inspect -f '{{.State.Running}}' weft-eu-web-app 2>/dev/null)" != true ]; then
  docker start weft-eu-web-app >/dev/null
  "$compose_dir/wait-sync.sh" 10 60
fi

step "1. HTTP/2 over TLS from a public client to an HTTP/1.1 app"
echo "curl speaks HTTP/2 (ALPN h2) to the eu gateway; inside the mesh the request stays"
echo "HTTP/2 in an mTLS tunnel and becomes HTTP/1.1 only at the last hop, in front of the app."
printf '$ curl --http2 https://web.localhost:%s/tour\n' "$(https_port eu)"
out=$(gw_curl eu https web.localhost /tour --http2 -H 'x-tour: 1' -w '\n%{http_version}')
body=$(head -n -1 <<<"$out")
summary <<<"$body"
expect "HTTP version curl used" 2 "$(tail -n 1 <<<"$out")"
expect "HTTP version the app received" HTTP/1.1 "$(json_get version <<<"$body")"
expect "app that answered" eu-web "$(json_get app <<<"$body")"
next

step "2. h2c end to end to an h2c app"
printf '$ curl --http2-prior-knowledge http://api.localhost:%s/tour\n' "$(http_port eu)"
body=$(gw_curl eu http api.localhost /tour --http2-prior-knowledge)
summary <<<"$body"
expect "HTTP version the app received" HTTP/2.0 "$(json_get version <<<"$body")"
expect "app that answered" eu-api "$(json_get app <<<"$body")"
next

step "3. gRPC streaming from eu to the us gRPC app"
echo "The route grpc-us.localhost prefers region us. The eu gateway reaches the us app"
echo "through the us ingress on the wan network, which routes by SNI and never decrypts."
show ctl route list
grpc() { # case
  python3 "$repo_root/tests/py/grpc_client.py" --target "127.0.0.1:$(https_port eu)" \
    --tls-ca "$run_dir/eu-gateway.pem" --server-name grpc-us.localhost \
    --authority grpc-us.localhost "$1"
}
printf '$ tests/py/grpc_client.py --target 127.0.0.1:%s --tls-ca compose/.run/eu-gateway.pem --server-name grpc-us.localhost server_stream\n' "$(https_port eu)"
out=$(grpc server_stream) || die "server streaming failed: $out"
echo "$out"
expect "apps that streamed the replies" '["us-echo"]' "$(json_get cases server_stream apps <<<"$out")"
out=$(grpc bidi) || die "bidirectional streaming failed: $out"
expect "app of the bidirectional stream" us-echo "$(json_get cases bidi app <<<"$out")"
next

step "4. weftctl service set-protocol changes what the app receives"
echo "Declare the HTTP/1.1 app as http2: its sidecar now hands it HTTP/2, which it cannot"
echo "read, and the control plane warns that the selector contradicts what the app speaks."
show ctl service set-protocol web http2
code() { gw_curl eu https web.localhost /tour -o /dev/null -w '%{http_code}'; }
code_is() { [ "$(code)" = "$1" ]; }
eventually 10 code_is 502 || die "the app still answered after set-protocol http2"
gw_curl eu https web.localhost /tour -D - -o /dev/null | grep -i -E '^(HTTP|weft-error-code)'
echo '$ ctl service get web   (warnings go to stderr)'
out=$(ctl service get web 2>&1)
echo "$out"
grep -q '^warning: declared http2, app behind .* speaks http/1.1' <<<"$out" ||
  die "weftctl service get web shows no mismatch warning"
show ctl service set-protocol web http
eventually 10 code_is 200 || die "the app did not answer again after set-protocol http"
expect "status after set-protocol http" 200 "$(code)"
next

step "5. Failover: the eu web app stops, us answers, eu comes back"
show docker stop weft-eu-web-app
app() { gw_curl eu https web.localhost /tour | json_get app; }
app_is() { [ "$(app)" = "$1" ]; }
eventually 15 app_is us-web || die "requests did not fail over to us"
expect "app that answered" us-web "$(app)"
show docker start weft-eu-web-app
echo "(the eu sidecar's probe sees its app again; the control plane marks it healthy and the gateway"
echo " tries it at once, even though it ejected it after the refusals)"
eventually 60 app_is eu-web || die "requests did not come back to eu"
expect "app that answered" eu-web "$(app)"

printf '\nThe tour is over. compose/down.sh removes the demo.\n'
