"""Writing goldens so that no interruption ever leaves a case half-written.

A case directory (or a model directory) is written complete into a hidden sibling
`.<name>.tmp-<pid>`, fsynced, then swapped with the old one by an atomic exchange
(renameat2 RENAME_EXCHANGE on Linux). A SIGKILL at any moment leaves either the old directory or
the new one in place, never a mix; leftovers are cleaned up by the next run.

Pending goldens (`--pending`) use the same swap: the new directory holds the accepted files
unchanged plus `<file>.new` for each file that differs and `<marker>.new` (the complete new
manifest), for `harness goldens review` / `accept` / `reject`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
MODEL_MARKER = "provenance.json"
PENDING = ".new"
FORMAT = 1

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = None


def _renameat2():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.renameat2  # noqa: B018 (presence check)
        except (OSError, AttributeError):
            _libc = False
    return _libc.renameat2 if _libc else None


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_sibling(final: Path) -> Path:
    return final.parent / f".{final.name}.tmp-{os.getpid()}"


def write_files(d: Path, files: dict[str, bytes]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        with open(d / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    _fsync_dir(d)


def write_file_atomic(path: Path, data: bytes) -> None:
    """Replace one file atomically: written and fsynced beside it, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def cleanup_on_error(tmp: Path):
    """Remove a half-written temp directory when writing it fails (the old one stays)."""
    try:
        yield
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def commit_dir(tmp: Path, final: Path) -> None:
    """Put the complete directory `tmp` in place of `final`, atomically where the OS allows."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if not final.exists():
        os.rename(tmp, final)
        _fsync_dir(final.parent)
        return
    fn = _renameat2()
    if fn is not None and fn(_AT_FDCWD, os.fsencode(str(tmp)), _AT_FDCWD, os.fsencode(str(final)), _RENAME_EXCHANGE) == 0:
        _fsync_dir(final.parent)
        shutil.rmtree(tmp)  # now holds the old contents
        return
    # Fallback (no renameat2): two renames; recover() repairs a kill between them.
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old)


def write_pending(final: Path, files: dict[str, bytes], marker: str) -> bool:
    """Write `files` beside the accepted contents of `final`: `<name>.new` for each file that is
    new or differs, plus `<marker>.new` whenever anything is pending. The accepted files are kept
    as they are; a previous pending set is replaced. One atomic swap, like commit_dir. Returns
    whether anything is pending."""
    current = {}
    had_pending = False
    if final.exists():
        for p in final.iterdir():
            if p.is_file():
                if p.name.endswith(PENDING):
                    had_pending = True
                else:
                    current[p.name] = p
    changed = {n: b for n, b in files.items() if n not in current or current[n].read_bytes() != b}
    removed = set(current) - set(files)
    pending = bool(changed or removed)
    if not pending and not had_pending:
        return False
    tmp = tmp_sibling(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name, p in current.items():
        try:
            os.link(p, tmp / name)
        except OSError:
            shutil.copy2(p, tmp / name)
    out = {}
    if pending:
        out = {f"{n}{PENDING}": b for n, b in changed.items()}
        out[f"{marker}{PENDING}"] = files[marker]
    write_files(tmp, out)
    commit_dir(tmp, final)
    return pending


def recover(root: Path) -> list[str]:
    """Remove leftovers of interrupted runs (temp directories and files); restore a directory a
    fallback swap left missing."""
    notes = []
    if not root.exists():
        return notes
    for p in sorted(root.rglob(".*")):
        name = p.name
        if p.is_file() and ".tmp-" in name:
            # A single file written by write_file_atomic (structure.json of a checkpoint).
            p.unlink()
            notes.append(f"removed unfinished {p}")
            continue
        if not p.is_dir():
            continue
        if ".tmp-" in name:
            shutil.rmtree(p, ignore_errors=True)
            notes.append(f"removed unfinished {p}")
        elif ".old-" in name:
            final = p.parent / name[1 : name.index(".old-")]
            if final.exists():
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.rename(p, final)
                notes.append(f"restored {final} from an interrupted swap")
    return notes


def manifest_bytes(m: dict) -> bytes:
    # allow_nan=False: NaN is not JSON; the Rust side could not read the manifest.
    return (json.dumps(m, indent=1, allow_nan=False) + "\n").encode()


def read_manifest(d: Path) -> dict | None:
    return read_manifest_file(d / MANIFEST)


def read_manifest_file(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None
