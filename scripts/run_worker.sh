#!/usr/bin/env bash
# Start one yadtq worker: scripts/run_worker.sh [worker_node options...]
# Addresses come from the options, else YADTQ_BOOTSTRAP / YADTQ_REDIS_URL (read by
# the worker itself, so a Redis password never shows in `ps`), else a running
# `yadtq local up`.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"

exec "$python" -m worker_node "$@"
