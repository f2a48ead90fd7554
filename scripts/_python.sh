# Sourced by the scripts here: picks a Python that has yadtq. In order: $PYTHON, the
# checkout's .venv (`make venv`), else a python3 with yadtq installed. The checkout's
# packages are put on the path only for a Python that has no yadtq installed of its own.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x "$root/.venv/bin/python" ]; then
        python="$root/.venv/bin/python"
    elif command -v python3 >/dev/null && python3 -c 'import yadtq' 2>/dev/null; then
        python=python3
    else
        echo "error: no Python with yadtq found: run \`make venv\` in $root (or" \
             "\`pip install yadtq\`), or set PYTHON=/path/to/python of an environment" \
             "that has it" >&2
        exit 1
    fi
fi
if ! "$python" -c 'import yadtq' 2>/dev/null; then
    export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
fi
