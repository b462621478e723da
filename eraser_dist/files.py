"""Writing a file or a folder so that a reader (or a crash) never sees it half-written."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``
    (atomic on one file system); the temporary file is removed if ``write`` fails."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def publish_folder(target: Path, write: Callable[[Path], object], overwrite: bool = False) -> Path:
    """Call ``write(tmp)`` on a fresh temporary folder beside ``target``, then rename it to
    ``target``, so that a reader (or a crash) sees the whole folder or none of it.

    On any failure the temporary folder is removed and ``target`` is left as it was. An
    existing ``target`` is refused with :class:`FileExistsError` unless ``overwrite``; then it
    is swapped aside and removed only once the new folder is in its place. The published
    folder has mode 0o755 unless ``write`` sets another.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(errno.EEXIST, "will not replace an existing folder", str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    aside = None
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a published folder is readable like a file
        write(tmp)
        if overwrite and target.exists():
            aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            os.replace(target, aside / target.name)
        os.replace(tmp, target)
    except BaseException:
        if aside is not None and not target.exists():
            os.replace(aside / target.name, target)  # the new folder did not take its place
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    return target
