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
# a temporary directory of this run's own: pytest prunes all but the 3 newest of its shared
# /tmp/pytest-of-$USER/pytest-N folders, which would pull brokers' data from under a run that
# is still going when other pytest sessions start beside it (a developer's, a second CI job)
case " $* " in
  *" --basetemp"*) exec .venv/bin/python -m pytest "$@" ;;
esac
basetemp=$(mktemp -d "${TMPDIR:-/tmp}/edgeflow-tests.XXXXXX")
trap 'rm -rf "$basetemp"' EXIT
.venv/bin/python -m pytest --basetemp "$basetemp" "$@"
