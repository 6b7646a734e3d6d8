# Sourced by the scripts: a virtualenv in .venv with the project installed in it.
# Usage: ensure_venv EXTRAS   (EXTRAS like "test" or "demo")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DBROUTER_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"

ensure_venv() {
    local extras="$1"
    if [ ! -x "$VENV/bin/python" ]; then
        if ! "$PYTHON_BIN" -m venv "$VENV" 2>/dev/null; then
            # Some distributions ship Python without ensurepip (Debian's python3-venv):
            # make the environment bare and let the machine's own pip put pip into it.
            rm -rf "$VENV"
            "$PYTHON_BIN" -m venv --without-pip "$VENV"
            "$PYTHON_BIN" -m pip --python "$VENV/bin/python" install --quiet pip
        fi
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
    fi
    local stamp="$VENV/.dbrouter-$extras"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$extras]"
        touch "$stamp"
    fi
}
