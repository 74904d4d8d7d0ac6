#!/usr/bin/env bash
# One command for the tests: sets up .venv if needed, then lint (ruff) and the pytest suite.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh
. .venv/bin/activate
ruff check .
ruff format --check .
python -m pytest "$@"
