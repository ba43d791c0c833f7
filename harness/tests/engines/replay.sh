#!/bin/sh
# Test engine: "computes" by copying prepared tensors from $REPLAY_DIR into the output directory
# ($HARNESS_OUTPUT_DIR), and keeps a copy of the request in $REQUEST_COPY when that is set.
set -eu
[ -n "${REQUEST_COPY:-}" ] && cp "$1" "$REQUEST_COPY"
cp "$REPLAY_DIR"/* "$HARNESS_OUTPUT_DIR"/
