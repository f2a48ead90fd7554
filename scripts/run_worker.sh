#!/usr/bin/env bash
# Start one yadtq worker: scripts/run_worker.sh [worker_node options...]
# Addresses come from YADTQ_BOOTSTRAP / YADTQ_REDIS_URL unless given as options
# (options win), else from a running `yadtq local up`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
# The checkout's packages import from any directory, installed or not.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

args=()
if [ -n "${YADTQ_BOOTSTRAP:-}" ]; then args+=(--bootstrap "$YADTQ_BOOTSTRAP"); fi
if [ -n "${YADTQ_REDIS_URL:-}" ]; then args+=(--redis "$YADTQ_REDIS_URL"); fi

exec "$python" -m worker_node "${args[@]}" "$@"
