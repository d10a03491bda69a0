"""Output files: written atomically, and never over something the user has unless they say --force."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UserError


def check_writable(path, force: bool) -> Path:
    """Refuse to overwrite an existing file without ``force``; fail early if the folder is missing."""
    p = Path(path)
    if p.exists() and not force:
        raise UserError(f"{p} exists (use --force to overwrite)")
    if not p.parent.exists():
        raise UserError(f"folder {p.parent} does not exist")
    return p


def write_atomic(path, data: str | bytes, force: bool = False) -> Path:
    """Write to a temporary file beside ``path`` and rename it into place, so readers never see half a file."""
    p = check_writable(path, force)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the user's usual mode
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
