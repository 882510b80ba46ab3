#!/usr/bin/env bash
# Sets up .venv with harness installed; `--test` adds the test extras.
#
# Torch: a bare `torch` requirement on a machine without torch pulls a CUDA build of several GB.
# So: if the Python that runs this already has torch >= 2.10 (a CUDA build, say), the venv sees it
# through --system-site-packages and it is left alone; otherwise torch==2.13.0 is installed first
# (set TORCH_SPEC / PIP_INDEX_URL to choose another build, e.g. a CPU index).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
EXTRAS=""
[ "${1:-}" = "--test" ] && EXTRAS="[test]"

have_torch=$("$PY" - <<'PY' 2>/dev/null || echo no
import torch, sys
major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
print("yes" if (major, minor) >= (2, 10) else "old")
PY
)

if [ ! -x .venv/bin/python ]; then
  if [ "$have_torch" = yes ]; then
    echo "setup: using the torch already installed for $PY (left as it is)"
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
VPY=.venv/bin/python

if ! "$VPY" -c "import torch" 2>/dev/null; then
  [ "$have_torch" = old ] && echo "setup: torch older than 2.10 found (CVE-2026-24747); installing a newer one in .venv"
  "$VPY" -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
fi

stamp=".venv/.harness-installed$EXTRAS"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VPY" -m pip install -q -e ".$EXTRAS"
  touch "$stamp"
fi
"$VPY" -c "import torch, harness; print(f'setup: harness {harness.__version__}, torch {torch.__version__}')"
