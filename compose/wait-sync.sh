#!/usr/bin/env bash
# wait-sync.sh COUNT [SECONDS]: waits until COUNT dataplanes are connected, each is
# healthy (for a sidecar: its probe found the app up, so callers will pick it), each has
# acknowledged the latest config version meant for it (`in_sync` in weftctl's JSON), and
# those acknowledgements carry every health change (health bumps the config version, so
# in_sync is checked after health). Exits 1 with the dataplane table if that does not
# happen in time (default 60 s).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
want=${1:?usage: wait-sync.sh COUNT [SECONDS]}
deadline=$((SECONDS + ${2:-60}))
while :; do
  if json=$(ctl dataplane list -o json 2>/dev/null) &&
    python3 -c '
import json, sys
want = int(sys.argv[1])
d = json.load(sys.stdin)
dps = d if isinstance(d, list) else next(v for v in d.values() if isinstance(v, list))
live = [p for p in dps if p.get("connected")]
def ready(p):
    if not (p.get("healthy") and p.get("in_sync")):
        return False
    # A sidecar is only worth routing to once its probe has seen its app answer.
    return p.get("kind") != "sidecar" or p.get("app_protocol") not in (None, "down")
sys.exit(0 if len(live) >= want and all(ready(p) for p in live) else 1)' "$want" <<<"$json"; then
    exit 0
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    ctl dataplane list >&2 || true
    die "not every dataplane is healthy and in sync after ${2:-60} s (want $want connected, each healthy, its app seen, on its latest version)"
  fi
  sleep 0.5
done
