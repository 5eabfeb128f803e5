# Shared by the compose scripts: how to call Compose and weftctl for this demo.
# shellcheck shell=bash

compose_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(dirname "$compose_dir")
# Files the scripts write: tokens (.env) and the gateways' certificates (.run/).
env_file="$compose_dir/.env"
run_dir="$compose_dir/.run"
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-weft}

if docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
else
  echo "error: neither 'docker compose' nor 'docker-compose' is installed; install Docker Compose" >&2
  exit 1
fi

# Compose with this demo's file, project name and token file.
dc() {
  local envf=()
  [ -f "$env_file" ] && envf=(--env-file "$env_file")
  "${compose_cmd[@]}" -p "$COMPOSE_PROJECT_NAME" --project-directory "$compose_dir" \
    -f "$compose_dir/docker-compose.yml" "${envf[@]}" "$@"
}

# The control plane replicas, and the URL list every client is given.
cp_replicas=(cp-1 cp-2)
cp_urls="https://cp-1:7400,https://cp-2:7400"

# weftctl inside a running control plane container: it finds /weft-data (admin token,
# CA, the same in every replica) and tries the replicas in turn.
ctl() {
  local c
  for c in "${cp_replicas[@]}"; do
    if [ "$(docker inspect -f '{{.State.Running}}' "weft-$c" 2>/dev/null)" = true ]; then
      docker exec -i "weft-$c" weftctl --cp "$cp_urls" "$@"
      return
    fi
  done
  echo "error: no control plane replica is running" >&2
  return 1
}

log() { printf '== %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Host ports of the gateways (compose publishes them on 127.0.0.1).
http_port() { case $1 in eu) echo "${WEFT_EU_HTTP_PORT:-8080}" ;; us) echo "${WEFT_US_HTTP_PORT:-9080}" ;; esac; }
https_port() { case $1 in eu) echo "${WEFT_EU_HTTPS_PORT:-8443}" ;; us) echo "${WEFT_US_HTTPS_PORT:-9443}" ;; esac; }

# gw_url REGION http|https HOST PATH: a URL of that region's gateway for a public host.
gw_url() {
  local port
  if [ "$2" = https ]; then port=$(https_port "$1"); else port=$(http_port "$1"); fi
  echo "$2://$3:$port$4"
}

# gw_curl REGION http|https HOST PATH [curl args...]: curl through a gateway, resolving
# HOST to 127.0.0.1 and trusting the gateway's development certificate.
gw_curl() {
  local region=$1 scheme=$2 host=$3 path=$4 port
  shift 4
  if [ "$scheme" = https ]; then port=$(https_port "$region"); else port=$(http_port "$region"); fi
  curl -sS --max-time 10 --resolve "$host:$port:127.0.0.1" --cacert "$run_dir/$region-gateway.pem" \
    "$@" "$scheme://$host:$port$path"
}

# json_get KEY [KEY...] < JSON: prints the value at that path ("" if absent).
json_get() {
  python3 -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1:]:
    v = v[int(k)] if isinstance(v, list) else (v or {}).get(k)
print("" if v is None else (json.dumps(v) if isinstance(v, (dict, list)) else v))' "$@"
}

# eventually SECONDS CMD...: runs CMD (anew each time: give it a function, not an
# expanded "$(...)") until it succeeds; fails after SECONDS.
eventually() {
  local until=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$until" ] || return 1
    sleep 0.5
  done
}
