#!/usr/bin/env bash
# Submit one task and print its result: scripts/run_client.sh add 1 2 [--timeout S]
# Addresses come from YADTQ_BOOTSTRAP / YADTQ_REDIS_URL, --bootstrap/--redis, or
# a running `yadtq local up`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
# The checkout's packages import from any directory, installed or not.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

exec "$python" -m yadtq submit --wait "$@"
