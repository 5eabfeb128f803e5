#!/usr/bin/env bash
# Stops and removes the demo: containers, networks, volumes (the control plane's store
# and every dataplane's state), the tokens in compose/.env and compose/.run/.
# The image weft-local:dev is kept (docker image rm weft-local:dev removes it).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
dc down --volumes --remove-orphans --timeout 10
rm -rf "$env_file" "$env_file.tmp" "$run_dir"
