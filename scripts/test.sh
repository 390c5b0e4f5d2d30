#!/usr/bin/env bash
# The test command: install, lint (ruff), type-check (mypy --strict on edgeflow/), run every test.
#   ./scripts/test.sh              # everything
#   ./scripts/test.sh -k windows   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
./scripts/system-deps.sh   # Java + Maven (Kafka broker), kcat, Mosquitto: the tests start real servers
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy edgeflow
exec .venv/bin/python -m pytest "$@"
