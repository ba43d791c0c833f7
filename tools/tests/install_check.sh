#!/usr/bin/env bash
# The goldens tool as another repository installs it: `pip install ./tools` into a fresh venv
# (python3 -m venv, no --system-site-packages), then the installed `harness-goldens` command,
# run outside the checkout, must reproduce a committed case bit for bit.
#
#   tools/tests/install_check.sh [CASE_GLOB]      # default: llama/mha
#
# Slow (torch and its dependencies, from pip's wheel cache when it has them, ~6 GB installed), so
# it is not a unittest: .ci/run calls it. $PYTHON picks the interpreter (default python3, >= 3.11).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
case_glob=${1:-llama/mha}
work=$(mktemp -d "${TMPDIR:-/tmp}/harness-install-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

# tools/ as a fresh clone has it. pip builds a local directory in place, which would leave
# build/ and harness_goldens.egg-info/ in the checkout; a copy keeps the checkout untouched.
mkdir "$work/src"
tar -C "$repo" --exclude=tools/.venv --exclude=tools/build --exclude='*.egg-info' --exclude=__pycache__ -cf - tools \
  | tar -C "$work/src" -xf -

# torch's Linux wheels pull CUDA libraries: the venv takes ~6 GB. Say so before pip fails halfway
# with "No space left on device" (what a CI machine with a full disk printed).
free_kb=$(df -Pk "$work" | awk 'NR == 2 { print $4 }')
if [ "$free_kb" -lt $((8 * 1024 * 1024)) ]; then
  echo "error: the install check needs ~8 GB free under ${TMPDIR:-/tmp}, $((free_kb / 1024)) MB are (hint: free disk space, or set TMPDIR to a larger disk)" >&2
  exit 1
fi
"${PYTHON:-python3}" -m venv "$work/venv"
start=$(date +%s)
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "$work/src/tools"
echo "pip install ./tools into a fresh venv: $(($(date +%s) - start)) s"

# Outside the checkout: the package must be the venv's, and the project is named by --root.
cd "$work"
"$work/venv/bin/python" -c '
import sys, harness_goldens
where = harness_goldens.__file__
assert where.startswith(sys.prefix), f"harness_goldens imported from {where}, not from the venv {sys.prefix}"
print(f"harness_goldens {harness_goldens.__version__} from {where}")
'
"$work/venv/bin/harness-hf-oracle" --help >/dev/null
"$work/venv/bin/harness-goldens" --check --root "$repo" --case "$case_glob" --quiet
