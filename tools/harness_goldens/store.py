"""Writing goldens so that no interruption ever leaves a case half-written.

A case directory (or a model directory) is written complete into a hidden sibling
`.<name>.tmp-<pid>`, fsynced, then swapped with the old one by an atomic exchange
(renameat2 RENAME_EXCHANGE on Linux). A SIGKILL at any moment leaves either the old directory or
the new one in place, never a mix; leftovers are cleaned up by the next run.

Pending goldens (`--pending`) use the same swap: the new directory holds the accepted files
unchanged plus `<file>.new` for each file that differs and `<marker>.new` (the complete new
manifest), for `harness goldens review` / `accept` / `reject`.

Writers of one directory take its lock first (`lock`: an flock on `<goldens>/.locks/<id>.lock`,
`<id>` being `llama/mha` or `models/<model>`, removed when the writer is done), so two runs never
interleave on it; `recover` leaves alone the leftovers of a directory whose lock is held (a run
still writing it) and removes lock files killed runs left.

Every file written ends up with the mode a plain `open()` gives, 0o666 & ~umask, also those that
libraries write through a private temp file (safetensors' save_file leaves 0o600), and
directories 0o777 & ~umask (`honour_umask`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
MODEL_MARKER = "provenance.json"
PENDING = ".new"
# Lock files, one per golden directory, under the goldens root (gitignored).
LOCKS = ".locks"
FORMAT = 1
# The generator's name in every manifest, provenance.json and structure.json (`generator.tool`):
# the script's path when the goldens were first made, kept so that the package writes the same
# bytes (it names the generator, not where it is installed).
TOOL = "tools/regen_goldens.py"

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


def umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc), else by the
    usual set-and-restore."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    m = os.umask(0o022)
    os.umask(m)
    return m


def file_mode() -> int:
    """The mode of a file created by open(): 0o666 & ~umask."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    return 0o777 & ~umask()


def honour_umask(d: Path) -> None:
    """Give every file under `d` 0o666 & ~umask and every directory (`d` too) 0o777 & ~umask:
    what libraries writing through mkstemp (0o600) leave is made what a plain open() gives."""
    fm, dm = file_mode(), dir_mode()
    os.chmod(d, dm)
    for p in d.rglob("*"):
        if p.is_symlink():
            continue
        if p.is_dir():
            os.chmod(p, dm)
        elif p.is_file():
            os.chmod(p, fm)


def write_files(d: Path, files: dict[str, bytes]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    mode = file_mode()
    for name, data in files.items():
        with open(d / name, "wb") as f:
            os.fchmod(f.fileno(), mode)  # a file that existed keeps its mode through O_TRUNC
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    _fsync_dir(d)


def write_file_atomic(path: Path, data: bytes) -> None:
    """Replace one file atomically: written and fsynced beside it (a unique hidden temp file,
    `.<name>.tmp-<pid>-*`, which recover() removes after a kill), then renamed over it. The
    result has mode 0o666 & ~umask, as open() would give, not mkstemp's 0o600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def lock_file(root: Path, rel: str) -> Path:
    """The lock file of the golden directory `rel` (`llama/mha`, `models/llama-tiny-mha`) of the
    goldens root `root`."""
    return root / LOCKS / f"{rel}.lock"


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return pid if pid.isdigit() else "?"


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _unlink_lock(root: Path, path: Path) -> None:
    """Remove a lock file whose lock the caller holds, and the directories of .locks it leaves
    empty (best effort: another run may be creating one there; it retries)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    top = root / LOCKS
    d = path.parent
    while True:
        try:
            d.rmdir()
        except OSError:
            break
        if d == top:
            break
        d = d.parent


@contextlib.contextmanager
def lock(root: Path, rel: str):
    """Hold the writer lock of the golden directory `rel` for the `with` block: an exclusive
    flock on its lock file, which holds the holder's pid. When another process holds it, say
    `note: waiting for another regen of <rel> (pid N)` on stderr and wait. The lock goes with
    the process: a killed writer never leaves it held.

    The holder removes the file before it lets go, so nothing stays under .locks after a run;
    a waiter that then finds it locked a removed file (another inode at the path, or none)
    opens it again. A file a killed run left is reused, then removed."""
    path = lock_file(root, rel)
    said = False
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except (FileNotFoundError, FileExistsError):
            continue  # its directory was removed by a holder letting go (mid mkdir): again
        except OSError as e:
            if e.errno != errno.EROFS:
                raise
            fd = None  # a read-only file system: no run can write here, nothing to keep apart
            break
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if not said:
                    print(f"note: waiting for another regen of {rel} (pid {_holder(fd)})", file=sys.stderr, flush=True)
                    said = True
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            break
        os.close(fd)  # locked a file the previous holder removed
    if fd is None:
        yield
        return
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        try:
            _unlink_lock(root, path)
        finally:
            os.close(fd)  # releases the lock


def is_locked(root: Path, rel: str) -> bool:
    """Whether another process holds the writer lock of `rel` now (never creates the file)."""
    try:
        fd = os.open(lock_file(root, rel), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _prune_locks(root: Path) -> None:
    """Remove the lock files killed runs left (those nobody holds), as a holder would."""
    top = root / LOCKS
    if not top.is_dir():
        return
    for p in sorted(top.rglob("*.lock")):
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(fd, p):
                _unlink_lock(root, p)
        except OSError:
            pass  # held: a run is writing
        finally:
            os.close(fd)


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
    os.chmod(tmp, dir_mode())  # a directory made by mkdtemp would be 0o700
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
    fallback swap left missing. The leftovers of a directory whose writer lock is held belong to
    a run still writing it: they are left alone."""
    notes = []
    if not root.exists():
        return notes

    def busy(d: Path) -> bool:
        """Whether a run holds the lock of the golden directory `d` (it is still writing)."""
        try:
            rel = d.relative_to(root).as_posix()
        except ValueError:
            return False
        return rel != "." and is_locked(root, rel)

    for p in sorted(root.rglob(".*")):
        name = p.name
        if LOCKS in p.relative_to(root).parts[:1]:
            continue
        if p.is_file() and ".tmp-" in name:
            # A single file written by write_file_atomic (structure.json of a checkpoint).
            if busy(p.parent):
                continue
            p.unlink()
            notes.append(f"removed unfinished {p}")
            continue
        if not p.is_dir():
            continue
        if ".tmp-" in name:
            if busy(p.parent / name[1 : name.index(".tmp-")]):
                continue
            shutil.rmtree(p, ignore_errors=True)
            notes.append(f"removed unfinished {p}")
        elif ".old-" in name:
            final = p.parent / name[1 : name.index(".old-")]
            if busy(final):
                continue
            if final.exists():
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.rename(p, final)
                notes.append(f"restored {final} from an interrupted swap")
    _prune_locks(root)
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
