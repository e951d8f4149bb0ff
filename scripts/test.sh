#!/usr/bin/env bash
# The test command: set up (idempotent), then ruff, mypy and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each phase prints a timestamped line, so a slow CI log says where its time went.
phase() { echo "[test.sh $(date +%H:%M:%S)] $*"; }
phase "setup"
bash scripts/setup.sh
VENV=${KBQA_VENV:-.venv}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 ANONYMIZED_TELEMETRY=False
phase "ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
phase "mypy"
"$VENV/bin/mypy"
phase "pytest"
"$VENV/bin/pytest" "$@"
