#!/usr/bin/env bash
# Sets up .venv with harness installed; `--test` adds the test extras.
#
# Torch: a bare `torch` requirement on a machine without torch pulls a CUDA build of several GB.
# So: if the Python that runs this already has torch >= 2.10 (a CUDA build, say), the venv sees it
# through --system-site-packages and it is left alone; otherwise torch==2.13.0 is installed first
# (set TORCH_SPEC / PIP_INDEX_URL to choose another build, e.g. a CPU index).
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools, installed with apt-get as root where they are missing; otherwise the set-up says so and goes on.
# bubblewrap: students' model code runs only inside it (harness/sandbox/jail.py); without it the harness refuses custom
# code with a finding (or runs it unsandboxed with --allow-unsandboxed-code, recorded in results.json).
# poppler-utils (--test only): pdftoppm, with which the tests look at report pages as PNG (they skip without it).
# chromium (--test only): a headless browser that opens the published leaderboard page (its test skips without it).
apt_install() {  # COMMAND PACKAGE WHAT-IS-LOST-WITHOUT-IT
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing $2 with apt-get"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null 2>&1; }; } ||
      echo "setup: could not install $2: $3"
  else
    echo "setup: $2 ($1) is not installed: $3 (apt-get install $2)"
  fi
}
apt_install bwrap bubblewrap "custom model code will be refused (see README, The sandbox)"
[ "${1:-}" = "--test" ] && apt_install pdftoppm poppler-utils "the tests that look at report pages as PNG will skip"
[ "${1:-}" = "--test" ] && apt_install chromium chromium "the test that opens the leaderboard page in a browser will skip"

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
"$VPY" -c "from harness.sandbox.jail import boundary; print('setup: sandbox for model code:', boundary().describe())"
