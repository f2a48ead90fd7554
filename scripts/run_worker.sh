#!/usr/bin/env bash
# Start one yadtq worker: scripts/run_worker.sh [worker_node options...]
# Addresses come from the options, else YADTQ_BOOTSTRAP / YADTQ_REDIS_URL (read by
# the worker itself, so a Redis password never shows in `ps`), else a running
# `yadtq local up`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
# The checkout's packages import from any directory, installed or not.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

exec "$python" -m worker_node "$@"
