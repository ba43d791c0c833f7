#!/usr/bin/env bash
# What CI runs for this example, from this directory or a copy of it anywhere:
#
#   PYTHON=/path/to/python ./run.sh
#
# Needs `harness` on PATH (cargo install --path <harness>/cli) and a Python with the goldens
# tool (pip install <harness>/tools): $PYTHON, else $HARNESS_PYTHON, else python3. The engine
# runs on that Python too (it needs only numpy, which the goldens tool brings).
#
#   1. the committed goldens are what the goldens tool makes today, bit for bit;
#   2. `harness run`: every trial of the engine passes;
#   3. the planted bug (NUMPY_ENGINE_BUG=gelu_erf): the run fails, and the report names
#      transformer.h.0.mlp.act (the engine's blk.0.ffn_act) as the first divergence.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-${HARNESS_PYTHON:-python3}}"
# The engine's command (cases/engines/numpy-gpt2.yaml) runs "${HARNESS_PYTHON:-python3}".
export HARNESS_PYTHON="$PYTHON"
# CI mode: an engine whose command is missing fails instead of being ignored, and the goldens
# tool refuses to write goldens (here it only checks them).
export CI=1
EXPECTED_TAP="transformer.h.0.mlp.act"

fail() {
    echo "run.sh: FAILED: $*" >&2
    exit 1
}
step() {
    printf '\n==> %s\n' "$*"
}

command -v harness >/dev/null || fail "no \`harness\` on PATH (install it: cargo install --path <harness>/cli)"
"$PYTHON" -c 'import harness_goldens, numpy' ||
    fail "$PYTHON cannot import the goldens tool (pip install <harness>/tools into it, or set PYTHON=/path/to/that/python)"

step "1/3 the committed goldens reproduce ($PYTHON -m harness_goldens --check)"
"$PYTHON" -m harness_goldens --check --quiet ||
    fail "goldens/ is not what the goldens tool makes now (regenerate: $PYTHON -m harness_goldens --all, and commit)"

step "2/3 harness run: the engine passes every case"
harness run || fail "harness run failed on the engine as it is (the report above names the trial and its first divergent tap)"

step "3/3 harness run with the planted bug NUMPY_ENGINE_BUG=gelu_erf: must fail at $EXPECTED_TAP"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
NUMPY_ENGINE_BUG=gelu_erf harness run >"$log" 2>&1 || status=$?
cat "$log"
[ "$status" -ne 0 ] || fail "harness run passed with the planted bug: the harness did not catch it"
grep -qF "first divergence: $EXPECTED_TAP" "$log" ||
    fail "harness run failed with the planted bug (exit $status), but no report names $EXPECTED_TAP as the first divergence"

printf '\nrun.sh: ok: goldens reproduce, the engine passes, the planted bug is caught at %s\n' "$EXPECTED_TAP"
