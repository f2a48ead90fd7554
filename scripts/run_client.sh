#!/usr/bin/env bash
# Submit one task and print its result: scripts/run_client.sh add 1 2 [--timeout S]
# Addresses come from YADTQ_BOOTSTRAP / YADTQ_REDIS_URL, --bootstrap/--redis, or
# a running `yadtq local up`.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"

# Waits 60 s for the result unless --timeout says otherwise (a later option wins), so a
# queue no worker serves ends with a message saying so instead of a wait for ever.
exec "$python" -m yadtq submit --wait --timeout 60 "$@"
