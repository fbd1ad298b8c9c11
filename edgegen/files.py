"""Publishing files and folders safely: atomic renames, owned temp folders, one builder per target.

A folder is built in a hidden sibling ``.NAME.tmp-*`` that holds an owner file with the builder's pid, and
renamed over ``NAME`` when complete. A builder killed outright (SIGKILL, power loss) leaves its temp folder
behind; the next build of the same target removes every such sibling whose owner is no longer alive, and
keeps those of a live process. Builders of the same target in several processes take an exclusive lock
(``.NAME.lock`` next to it): the second waits, then finds the target built. Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from edgegen.errors import EdgegenError
from edgegen.manifest import is_model_folder

OWNER_FILE = ".edgegen-owner"  # inside a temp folder: "pid host" of the process building it
# A temp folder from before owner files existed (or caught between mkdtemp and writing the owner) is
# only removed once it is clearly abandoned.
_UNOWNED_GRACE_S = 3600.0


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` as ``dst`` (no bytes copied; a writer that later replaces ``src`` by rename leaves
    ``dst`` as it was), or copy it where a link cannot be made (another file system)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def publish_file(tmp: str | Path, out: str | Path) -> None:
    """Give ``tmp`` the umask's permissions (mkstemp and safetensors write 0600, which hides a shared store or
    a shippable pack from other users), then atomically replace ``out`` with it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, out)


def _os_error(action: str, path: Path, e: OSError) -> EdgegenError:
    return EdgegenError(f"cannot {action} {path}: {e.strerror or e}")


def check_writable(out: Path) -> None:
    """Fail early (before a long build) when the folder ``out`` cannot be created: a file where a folder should
    be, or a read-only parent."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgegenError(f"output path {out} exists and is not a folder")
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is None:
        return
    if existing != out and not existing.is_dir():
        raise EdgegenError(f"cannot write {out}: {existing} is a file, not a folder")
    folder = existing if existing != out else out.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise EdgegenError(f"cannot write {out}: {folder} is not writable")


def check_output_dir(out_dir: Path) -> None:
    """Refuse to overwrite anything but an edgegen model folder (or an empty folder)."""
    check_writable(out_dir)
    if not out_dir.exists():
        return
    if any(out_dir.iterdir()) and not is_model_folder(out_dir):
        raise EdgegenError(
            f"output folder {out_dir} is not empty and not an edgegen model folder; refusing to replace it"
        )


# --- owned temp folders -----------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _abandoned(folder: Path) -> bool:
    """True when the process that made ``folder`` is gone (its owner file names a dead pid on this host)."""
    try:
        pid_text, _, host = (folder / OWNER_FILE).read_text().strip().partition(" ")
        pid = int(pid_text)
    except FileNotFoundError:
        try:
            return time.time() - folder.stat().st_mtime > _UNOWNED_GRACE_S
        except OSError:
            return False
    except (OSError, ValueError):
        return False
    if host and host != socket.gethostname():
        return False  # a shared file system: a pid of another machine says nothing here
    return not _pid_alive(pid)


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove the temp folders that killed builders of ``target`` left next to it; return what was removed."""
    target = Path(target)
    removed = []
    try:
        siblings = [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]
    except OSError:
        return removed
    for p in siblings:
        owned = (p / OWNER_FILE).is_file()
        legacy = p.name.startswith((f".{target.name}.tmp-", f".{target.name}.old-"))
        if p.is_dir() and not p.is_symlink() and (owned or legacy) and _abandoned(p):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def owned_tempdir(target: Path, kind: str = "tmp") -> Path:
    """A new hidden folder ``.NAME.KIND-*`` next to ``target``, marked with this process as its owner."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-", dir=target.parent))
    except OSError as e:
        raise _os_error("write", target, e) from None
    (tmp / OWNER_FILE).write_text(f"{os.getpid()} {socket.gethostname()}\n")
    return tmp


@contextlib.contextmanager
def scratch_folder(target: Path) -> Iterator[Path]:
    """An owned temp folder next to ``target`` for work files, removed at the end (a killed build's is removed
    by the next build of the same target)."""
    remove_stale_temps(target)
    tmp = owned_tempdir(target)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def exclusive(target: Path) -> Iterator[None]:
    """Hold the build lock of ``target`` (``.NAME.lock`` next to it), waiting for another process's build."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target.parent / f".{target.name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise _os_error("write", target, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock; the file stays (removing it would race a waiter)


@contextlib.contextmanager
def atomic_folder(out_dir: Path, check: bool = True) -> Iterator[Path]:
    """Yield an owned hidden sibling folder; on success it replaces `out_dir`, on any failure it is removed.

    check: refuse to replace a non-empty folder that is not an edgegen model (off for work folders
    such as a training corpus that the caller owns). Temp folders that killed builders left are removed first.
    """
    out_dir = Path(out_dir)
    if check:
        check_output_dir(out_dir)
    else:
        check_writable(out_dir)
    remove_stale_temps(out_dir)
    tmp = owned_tempdir(out_dir)
    try:
        yield tmp
        if check:
            check_output_dir(out_dir)  # again: something may have appeared while we worked
        (tmp / OWNER_FILE).unlink(missing_ok=True)
        publish_folder(tmp, out_dir)
    except BaseException:  # KeyboardInterrupt included: never leave half an export behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_folder(tmp: Path, out_dir: Path) -> None:
    """Move the finished folder ``tmp`` to ``out_dir`` by renames, replacing an older one (put back on failure)."""
    try:
        if not out_dir.exists():
            os.replace(tmp, out_dir)
            return
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
            os.replace(tmp, out_dir)
            return
        # Replace an older export: move it aside first so a failed rename can put it back.
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        old.rmdir()
        os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            os.replace(old, out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise _os_error("write", out_dir, e) from None
