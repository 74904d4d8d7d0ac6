#!/usr/bin/env bash
# One command for the main job on the embedded default: sets up .venv if needed, then
# `cardiac-uda demo` (phantom data, source_only vs adaptation, report in demo_out/). Extra arguments
# go to `cardiac-uda demo`, e.g. ./run_demo.sh --method adabn --out my_demo
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh
. .venv/bin/activate
cardiac-uda demo "$@"
