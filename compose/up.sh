#!/usr/bin/env bash
# One command for the whole two-region demo: builds the binaries and the image (no
# registry needed), starts the control plane, creates the services, routes and one
# bootstrap token per dataplane (kept in compose/.env, mode 0600), starts everything
# else and waits until every dataplane has acknowledged the current config.
# Run it again at any time: it keeps what exists. compose/down.sh removes it all.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

regions=(eu us)
apps=(web api echo)

"$compose_dir/build-image.sh"
"$compose_dir/build-postgres-image.sh"

# The secret that encrypts the CA key in the database, the same for both replicas.
mkdir -p "$run_dir"
if [ ! -s "$run_dir/ca-key-secret" ]; then
  log "CA key secret -> $run_dir/ca-key-secret"
  (umask 077 && head -c 32 /dev/urandom | base64 >"$run_dir/ca-key-secret")
fi
# The replicas run as uid 65532: give it the file rather than opening it to everyone.
chown 65532 "$run_dir/ca-key-secret" 2>/dev/null || chmod 0644 "$run_dir/ca-key-secret"

log "starting PostgreSQL and the control plane replicas"
dc up -d --no-recreate postgres "${cp_replicas[@]}"
# A replica that starts before PostgreSQL accepts connections exits and is restarted.
for _ in $(seq 1 200); do
  ctl service list >/dev/null 2>&1 && break
  sleep 0.3
done
ctl service list >/dev/null || die "the control plane did not come up: see '${compose_cmd[*]} -p $COMPOSE_PROJECT_NAME logs postgres cp-1 cp-2'"

log "services and routes"
ensure_service() { # name protocol port
  ctl service get "$1" >/dev/null 2>&1 || ctl service create "$1" --protocol "$2" --port "$3" >/dev/null
}
ensure_route() { # host service [flags]
  local host=$1
  shift
  ctl route list | awk 'NR > 1 { print $1 }' | grep -qx "$host" || ctl route create "$host" --service "$@" >/dev/null
}
ensure_service web http 7001
ensure_service api http2 7002
ensure_service echo grpc 7003
ensure_route web.localhost web
ensure_route api.localhost api
ensure_route grpc.localhost echo
ensure_route grpc-us.localhost echo --prefer-region us

# One token per dataplane, so each can be revoked alone. Kept for restarts.
if [ ! -f "$env_file" ]; then
  log "bootstrap tokens -> $env_file"
  umask 077
  {
    echo "# Bootstrap tokens written by compose/up.sh; removed by compose/down.sh."
    for r in "${regions[@]}"; do
      R=${r^^}
      echo "${R}_GATEWAY_TOKEN=$(ctl token create --gateway "$r-gateway" --ttl 720h | tail -n 1)"
      echo "${R}_INGRESS_TOKEN=$(ctl token create --ingress "$r-ingress" --ttl 720h | tail -n 1)"
      for a in "${apps[@]}"; do
        echo "${R}_${a^^}_TOKEN=$(ctl token create --service "$a" --ttl 720h | tail -n 1)"
      done
    done
  } >"$env_file.tmp"
  mv "$env_file.tmp" "$env_file"
fi

log "starting the gateways, ingresses, apps and sidecars"
dc up -d --no-recreate

log "waiting for every dataplane to acknowledge the current config"
"$compose_dir/wait-sync.sh" 10 120

mkdir -p "$run_dir"
for r in "${regions[@]}"; do
  for _ in $(seq 1 50); do
    docker cp "weft-$r-gateway:/state/gateway-cert.pem" "$run_dir/$r-gateway.pem" 2>/dev/null && break
    sleep 0.2
  done
done

eu_https=${WEFT_EU_HTTPS_PORT:-8443}
cat <<MSG

The demo is up: regions eu and us, each with web (HTTP/1.1), api (h2c) and echo (gRPC).
  eu gateway: http://127.0.0.1:${WEFT_EU_HTTP_PORT:-8080}  https://127.0.0.1:$eu_https
  us gateway: http://127.0.0.1:${WEFT_US_HTTP_PORT:-9080}  https://127.0.0.1:${WEFT_US_HTTPS_PORT:-9443}

Try:
  curl --cacert compose/.run/eu-gateway.pem --resolve web.localhost:$eu_https:127.0.0.1 https://web.localhost:$eu_https/hello
  docker exec weft-cp-1 weftctl cp status
  docker exec weft-cp-1 weftctl dataplane list
  compose/demo.sh        a guided tour (HTTP/2 end to end, gRPC across regions, failover)
  compose/down.sh        stop and remove everything
MSG
