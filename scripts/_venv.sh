# Sourced by the scripts: a virtualenv in .venv with the project installed in it.
# Usage: ensure_venv EXTRAS   (EXTRAS like "test" or "demo")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DBROUTER_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"
# pip speaks up only for errors: no upgrade notice, no warnings about the machine's own pip
# configuration.
export PIP_DISABLE_PIP_VERSION_CHECK=1
PIP_QUIET=(--quiet --quiet)

ensure_venv() {
    local extras="$1"
    if [ ! -x "$VENV/bin/python" ]; then
        echo "== setting up $VENV (first run only)"
        if ! "$PYTHON_BIN" -m venv "$VENV" 2>/dev/null; then
            # Some distributions ship Python without ensurepip (Debian's python3-venv):
            # make the environment bare and let the machine's own pip put pip into it.
            rm -rf "$VENV"
            "$PYTHON_BIN" -m venv --without-pip "$VENV"
            "$PYTHON_BIN" -m pip --python "$VENV/bin/python" install "${PIP_QUIET[@]}" pip
        fi
        "$VENV/bin/python" -m pip install "${PIP_QUIET[@]}" --upgrade pip
    fi
    local stamp="$VENV/.dbrouter-$extras"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        echo "== installing dbrouter[$extras] into $VENV"
        "$VENV/bin/python" -m pip install "${PIP_QUIET[@]}" -e "$ROOT[$extras]"
        touch "$stamp"
    fi
}
