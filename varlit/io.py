"""Atomic file writes: a killed process never leaves a half-written file under the final name."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


class FolderError(ValueError):
    """A folder that cannot be written to (a file in its place, or read-only for this user)."""


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """Fail with one line if `path` cannot become a writable folder, leaving nothing behind.

    `os.access` trusts permission bits (and says yes to root everywhere); a folder such as /sys refuses new
    files all the same, so the nearest existing folder is also probed with a temporary file."""
    path = Path(path).expanduser()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        shown = "" if probe == path else f" (its parent {probe} is a file)"
        raise FolderError(f"{what} {path} is not a folder{shown}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise FolderError(f"{what} {path} is not writable ({probe} is read-only for this user)")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".varlit-probe-", suffix=".tmp")
    except OSError as err:
        raise FolderError(
            f"{what} {path} is not writable ({probe} refuses new files: {err.strerror})"
        ) from None
    os.close(fd)
    os.unlink(tmp)


def atomic_write(
    path: str | os.PathLike, write: Callable[[str], None], tmp_prefix: str | None = None
) -> Path:
    """Call `write(tmp_path)`, then move the finished file into place (same directory, so os.replace is atomic).

    `tmp_prefix` names the temporary file, for owners that sweep up leftovers of killed writes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}." if tmp_prefix is None else tmp_prefix
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; outputs follow the umask
        _fsync(tmp)  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync(path.parent, directory=True)  # ... and the rename itself survives a crash
    return path


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: str | os.PathLike, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return  # some filesystems cannot open folders; the file itself was synced
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_png(path: str | os.PathLike, image_HW3_uint8) -> Path:
    """Save an RGB uint8 array/tensor as PNG, atomically."""
    from PIL import Image

    arr = image_HW3_uint8.cpu().numpy() if hasattr(image_HW3_uint8, "cpu") else image_HW3_uint8
    return atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))
