"""Output files: written atomically, and never over something the user has unless they say --force."""
from __future__ import annotations

import errno
import fcntl
import glob
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

TMP_SUFFIX = ".tmp"


def check_writable(path, force: bool) -> Path:
    """Refuse to overwrite an existing file without ``force`` (and a folder ever); fail early on a name the
    file system cannot take or a parent that is missing or not a folder."""
    p = Path(path)
    name_max = 255  # NAME_MAX of Linux file systems; checked first: stat() of a longer name raises
    if len(p.name.encode()) > name_max:
        raise UserError(f"file name {p.name[:40]}... is {len(p.name.encode())} bytes long (the limit is {name_max})")
    if p.is_dir():
        raise UserError(f"{p} is a folder: give a file name to write")
    if (p.exists() or p.is_symlink()) and not force:
        raise UserError(f"{p} exists (use --force to overwrite)")
    if p.exists() and not p.is_file():
        raise UserError(f"{p} is not a regular file: refusing to replace it")
    parent = p.parent
    if not parent.exists():
        raise UserError(f"folder {parent} does not exist")
    if not parent.is_dir():
        raise UserError(f"{parent} is not a folder, so {p.name} cannot be written in it")
    return p


def check_outputs(paths, force: bool) -> list[Path]:
    """One check of every file a command will write, before it writes any: each writable, none twice."""
    out = [check_writable(p, force) for p in paths if p is not None]
    seen = {}
    for p in out:
        k = os.path.abspath(p)
        if k in seen:
            raise UserError(f"{seen[k]} and {p} name the same file: give each output its own name")
        seen[k] = p
    return out


def _tmp_prefix(p: Path) -> str:
    """Temporary names carry the writer's pid (to tell a dead writer's leftovers from a live one's) and a cut
    name, so a long output name still leaves room for them."""
    return f".{p.name[:100]}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    return True


def remove_stale_temps(p: Path) -> None:
    """Delete the temporary files (or checkpoint folders) a killed writer of ``p`` left behind (its pid no
    longer runs)."""
    import shutil

    tail = re.compile(r"(\d+)\.[a-z0-9_]+" + re.escape(TMP_SUFFIX))  # pid, then mkstemp's random part
    for tmp in p.parent.glob(f".{glob.escape(p.name[:100])}.*{TMP_SUFFIX}"):
        m = tail.fullmatch(tmp.name[len(p.name[:100]) + 2:])
        if m and not _alive(int(m.group(1))):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def write_atomic(path, data: str | bytes, force: bool = False) -> Path:
    """Write to a temporary file beside ``path`` and rename it into place, so readers never see half a file.
    A write that fails (full disk, quota) removes its temporary file and is one UserError."""
    with atomic_file(path, force) as tmp:
        try:
            tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    return Path(path)


@contextmanager
def folder_lock(folder: Path, what: str = "run"):
    """Hold an exclusive lock on ``folder`` (a ``.lock`` file in it) for one run; a second run refuses at once
    instead of doing the same work or clearing the first one's results. The kernel drops the lock when the
    holder dies, so a killed run never leaves the folder locked."""
    lock = Path(folder) / ".lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot lock {folder}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"another {what} is using {folder} (wait for it to finish, or use another "
                                "folder)") from None
            raise
        yield
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path, force: bool = False):
    """Yield a temporary path beside ``path`` for a writer that streams (a file too large to build in memory);
    it replaces ``path`` only when the block ends without error, else it is removed."""
    p = check_writable(path, force)
    remove_stale_temps(p)
    try:
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=_tmp_prefix(p), suffix=TMP_SUFFIX)
        os.close(fd)
    except OSError as e:
        raise UserError(f"cannot write {p}: {e.strerror}") from None
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write {p}: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_folder(path, force: bool) -> Path:
    """Refuse an output folder that exists (without ``force``) or whose parent is missing."""
    p = Path(path)
    if (p.exists() or p.is_symlink()) and not force:
        raise UserError(f"{p} exists (use --force to overwrite)")
    if p.exists() and not p.is_dir():
        raise UserError(f"{p} is not a folder: refusing to replace it with one")
    if not p.parent.is_dir():
        raise UserError(f"folder {p.parent} does not exist")
    return p


@contextmanager
def atomic_folder(path, force: bool = False):
    """Yield a temporary folder beside ``path``; when the block succeeds it takes ``path``'s place (an old
    folder there is removed only after the new one is in place), else it is removed. Readers never see a
    half-written checkpoint."""
    import shutil

    p = check_folder(path, force)
    remove_stale_temps(p)
    try:
        tmp = Path(tempfile.mkdtemp(dir=p.parent, prefix=_tmp_prefix(p), suffix=TMP_SUFFIX))
    except OSError as e:
        raise UserError(f"cannot write {p}: {e.strerror}") from None
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        old = None
        if p.exists():
            old = p.with_name(f"{_tmp_prefix(p)}old{TMP_SUFFIX}")
            os.replace(p, old)
        os.replace(tmp, p)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write {p}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
