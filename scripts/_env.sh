# Shared set-up for scripts/demo and scripts/test: create .venv when missing and install.
# torch is installed first and pinned, so pip takes the local CPU build and never a CUDA one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NALU_STUDY_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

ensure_venv() {
    local extra="${1:-}"
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating $VENV"
        "$PY" -m venv "$VENV"
        "$VENV/bin/pip" install -q --upgrade pip
    fi
    # constraints.txt pins the tested stack (torch, Ray, MLflow, Optuna), as the image does
    local constraints="$ROOT/constraints.txt"
    if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        echo "==> installing torch first, at its pin in constraints.txt (the CPU build)"
        "$VENV/bin/pip" install -q -c "$constraints" torch
    fi
    local stamp="$VENV/.nalu-study-installed$extra"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] \
        || [ "$constraints" -nt "$stamp" ]; then
        echo "==> installing nalu-study${extra:+ with [$extra]}"
        "$VENV/bin/pip" install -q -c "$constraints" -e "$ROOT${extra:+[$extra]}"
        touch "$stamp"
    fi
    export PATH="$VENV/bin:$PATH"
    # Ray's token auth is on by default in 2.5x+; keep its token inside the venv's home-free area
    export RAY_USAGE_STATS_ENABLED=0
}
