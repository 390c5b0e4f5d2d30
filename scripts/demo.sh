#!/usr/bin/env bash
# The main job on a fresh machine: install, then run the quickstart flow on simulated sensors.
#   ./scripts/demo.sh            # = edgeflow deploy flows/quickstart.py --for 20s
#   ./scripts/demo.sh --for 5m   # extra arguments go to edgeflow deploy
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
if [ "$#" -eq 0 ]; then set -- --for 20s; fi
exec .venv/bin/edgeflow deploy flows/quickstart.py "$@"
