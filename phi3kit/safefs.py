"""Writing and deleting on a learner's disk without losing work or reaching outside the kit's own folders.

The rules every module follows by calling this room:
- a file the kit writes (an executed notebook, a handout, a CSV, tuning results, a manifest) goes to a
  temporary file beside it and is renamed into place: an interrupt or a full disk leaves the previous good
  file, never a half one;
- a folder the kit builds (an export, an unpacked pack entry) is built under a unique temporary name in the
  folder it will live in, and renamed into place, retrying while Windows' indexer or antivirus holds a file;
- the kit deletes only inside a root it owns (its cache), checked on the paths as written: a root the user
  typed is never resolved (on Windows that turns a mapped drive into a UNC path and follows junctions);
- a path read from outside (a pack's index) is checked as written, component by component, before
  anything moves.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from .errors import ResourceError, StorageError, UnsafePathError

T = TypeVar("T")

# Windows device names, reserved with any extension ("NUL.txt" is the device too).
_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", *(f"COM{i}" for i in range(10)),
             *(f"LPT{i}" for i in range(10)), "COM¹", "COM²", "COM³", "LPT¹", "LPT²", "LPT³"}
# Characters Windows refuses in a name, control characters, and both separators' odd cousin.
_BAD_CHARS = re.compile(r'[<>:"|?*\\\x00-\x1f]')
_WINDOWS_HELD = (5, 32)  # ERROR_ACCESS_DENIED, ERROR_SHARING_VIOLATION: a file held open by another process
RETRY_DELAYS = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2)


def human_size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def check_relative(text: object, what: str) -> str:
    """`text` as a safe relative POSIX path, or UnsafePathError naming `what`.

    Refused: anything not a non-empty string; absolute paths, drive letters and UNC prefixes; empty, `.` and
    `..` components; backslashes, colons and other characters Windows refuses; names Windows reserves for
    devices (CON, NUL, COM1...); names ending in a dot or a space (Windows drops those, so two names would meet).
    """
    if not isinstance(text, str) or not text:
        raise UnsafePathError(f"{what}: {text!r} is not a path (a non-empty string was expected).")
    if text.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", text):
        raise UnsafePathError(f"{what}: {text!r} is an absolute path; only paths inside the folder are allowed.")
    for part in text.split("/"):
        if part in ("", ".", ".."):
            raise UnsafePathError(f"{what}: {text!r} has a {part or 'empty'!r} component; only plain names "
                                  "inside the folder are allowed.")
        if _BAD_CHARS.search(part):
            raise UnsafePathError(f"{what}: {text!r} holds a character Windows refuses in a file name "
                                  "(one of < > : \" | ? * \\ or a control character).")
        if part[-1] in ". ":
            raise UnsafePathError(f"{what}: {text!r} has a name ending in a dot or a space.")
        if part.split(".")[0].upper().rstrip(" ") in _RESERVED:
            raise UnsafePathError(f"{what}: {text!r} uses {part!r}, a name Windows reserves for a device.")
    return text


def is_link(path: Path) -> bool:
    """A symlink, or on Windows any reparse point (a junction is not a symlink to Python 3.11)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if stat.S_ISLNK(st.st_mode):
        return True
    return bool(getattr(st, "st_file_attributes", 0) & getattr(stat, "FILE_ATTRIBUTE_REPARSE_POINT", 0x400))


def _lexical(path: Path) -> str:
    return os.path.normcase(os.path.abspath(path))


def is_inside(path: Path, root: Path) -> bool:
    """`path` strictly below `root`, compared as written (made absolute, never resolved)."""
    p, r = _lexical(path), _lexical(root)
    try:
        return p != r and os.path.commonpath([p, r]) == r
    except ValueError:  # other drives on Windows
        return False


def links_between(root: Path, path: Path) -> list[Path]:
    """The components from `root` (excluded) down to `path` (included) that are links."""
    rel = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root)))
    here, found = Path(root), []
    for part in rel.parts:
        here = here / part
        if is_link(here):
            found.append(here)
    return found


def _clear_readonly(func: Callable[..., object], path: str, _exc: object) -> None:
    """rmtree's error handler: a read-only file (a copy from a pack on Windows) is made writable and retried."""
    os.chmod(path, stat.S_IWRITE | stat.S_IREAD | (stat.S_IEXEC if os.path.isdir(path) else 0))
    func(path)


def remove_tree(path: Path, root: Path) -> None:
    """Delete `path`, which must lie strictly inside `root` (the kit's cache) with no link on the way there.

    Every folder deletion of the kit goes through here: what is outside the root the kit owns is never touched.
    """
    if not is_inside(path, root):
        raise UnsafePathError(f"refusing to delete {path}: it is not inside {root}, the only folder the kit deletes in")
    if links := links_between(root, path):
        raise UnsafePathError(f"refusing to delete {path}: {links[0]} is a link, so the folder may lie outside {root}")
    if not os.path.lexists(path):
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=_clear_readonly)
    else:
        shutil.rmtree(path, onerror=_clear_readonly)


def retry_held(action: Callable[[], T], delays: tuple[float, ...] = RETRY_DELAYS) -> T:
    """Run `action`, retrying with backoff while Windows reports a file held by another process.

    Right after gigabytes are written, Defender or the search indexer may hold a file for a few seconds;
    a rename then fails with WinError 5 or 32, and succeeds when tried again.
    """
    for delay in (*delays, None):
        try:
            return action()
        except PermissionError as exc:
            if delay is None or getattr(exc, "winerror", None) not in _WINDOWS_HELD:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


def temp_dir(parent: Path, name: str) -> Path:
    """A new, uniquely named temporary folder in `parent`: two processes never share one."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{name}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    return tmp


def place_folder(tmp: Path, final: Path, root: Path) -> None:
    """Rename the finished folder `tmp` to `final`, replacing what is there; both lie inside `root`.

    An old `final` is first renamed aside, so at no moment is there neither the old nor the new folder;
    it is deleted only once the new one is in place.
    """
    if not (is_inside(tmp, root) and is_inside(final, root)):
        raise UnsafePathError(f"refusing to place {tmp} at {final}: both must be inside {root}")
    old = None
    if os.path.lexists(final):
        old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:12]}"
        retry_held(lambda: os.replace(final, old))
    try:
        retry_held(lambda: os.replace(tmp, final))
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        remove_tree(old, root)


def storage_error(exc: OSError, path: Path, fix: str = "") -> StorageError:
    """The kit's message for a location that cannot be written: which path, why, and what to do."""
    code = exc.errno
    if code == errno.ENOSPC or code == getattr(errno, "EDQUOT", -1):
        why = "the disk is full"
        fix = fix or "free some space, or choose a folder on another disk"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = "the location is read-only or not yours to write"
        fix = fix or "choose a folder you can write to"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        why = "a file is in the way where a folder is needed"
        fix = fix or "choose a folder, not a file"
    else:
        why = exc.strerror or type(exc).__name__
        fix = fix or "choose another folder"
    return StorageError(f"Cannot write {path}: {why} ({exc.strerror or exc}). Fix: {fix}.", path=path)


@contextmanager
def atomic_path(path: str | os.PathLike[str], fix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on any failure it is removed.

    For writers that want a file name (papermill, pandas, nbconvert). An interrupt or a full disk leaves
    the previous `path` as it was.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        retry_held(lambda: os.replace(tmp, path))
    except OSError as exc:
        raise storage_error(exc, path, fix) from exc
    finally:
        if os.path.lexists(tmp):
            try:
                tmp.unlink()
            except OSError:
                pass


def atomic_write(path: str | os.PathLike[str], data: str | bytes, fix: str = "") -> Path:
    """Write `data` (text as UTF-8) to `path` so that it is either the old file or the whole new one."""
    with atomic_path(path, fix) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def writable_dir(folder: str | os.PathLike[str], fix: str = "") -> Path:
    """Make `folder` if needed and prove it can be written (a probe file), before slow work starts."""
    folder = Path(folder)
    try:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(folder))
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".phi3kit-probe-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise storage_error(exc, folder, fix) from exc
    return folder


def free_bytes(folder: Path) -> int:
    """Free space on the disk that holds `folder` (or its nearest existing parent)."""
    here = Path(os.path.abspath(folder))
    while not here.exists() and here != here.parent:
        here = here.parent
    return shutil.disk_usage(here).free


def require_free_space(folder: Path, need: int, what: str, fix: str = "") -> None:
    """ResourceError, in the export preflight's words, when `need` bytes will not fit at `folder`."""
    free = free_bytes(folder)
    if need > free:
        raise ResourceError(
            f"{what} needs about {human_size(need)} of disk at {folder}, and {human_size(free)} is free. Fix: "
            + (fix or "free some space, or point the cache at a bigger disk (--cache-dir or PHI3KIT_CACHE)") + ".")


def free_path(path: Path, overwrite: bool) -> Path:
    """`path`, or `name-1.ext`, `name-2.ext`... so an earlier result is never overwritten."""
    if overwrite or not path.exists():
        return path
    n = 1
    while (candidate := path.with_name(f"{path.stem}-{n}{path.suffix}")).exists():
        n += 1
    return candidate
