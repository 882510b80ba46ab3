#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's image; the zip lies unpacked in
# /autograder/source. Everything done here is in the image: every student's run starts from it.
set -euo pipefail
cd /autograder/source
export HARNESS_CACHE=/autograder/harness-cache

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  apt-get update && apt-get install -y python3.11 python3.11-venv
  PY=python3.11
fi
"$PY" -m venv /autograder/venv || { apt-get update && apt-get install -y python3-venv && "$PY" -m venv /autograder/venv; }
VPY=/autograder/venv/bin/python

# The CPU wheel first: a bare `torch` requirement would pull a CUDA build of several GB.
"$VPY" -m pip install -q --index-url https://download.pytorch.org/whl/cpu "torch>=2.10"
"$VPY" -m pip install -q /autograder/source/harness-*.whl

# Freeze the course's data now, so that no run spends its time tokenizing.
/autograder/venv/bin/harness data prepare --course course.toml
# Measure the reference model(s) once: run_autograder's --out holds the cached measurement, so a run
# evaluates the student's model only. (An empty submission is not gradable: exit 1 is expected.)
mkdir -p /tmp/warm-up
/autograder/venv/bin/harness check /tmp/warm-up --course course.toml --out /autograder/harness-out --no-reports || true
