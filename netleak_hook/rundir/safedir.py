"""Directories only root can change, and files in them opened without
following links.

netleak, as root, keeps its state, socket and logs in a run directory and
its pins in a bpffs folder. If another user could write such a directory,
or one above it, they could put a daemon socket of their own there (and
netleak-exec would believe its answers), or a link that makes root write
through it. So every such directory is opened component by component
from `/`, without following links, and each must belong to root and be
writable by nobody else; a parent may be writable by others only if it is
sticky and root's (as /tmp is: then nobody else can rename or replace what
is in it). Files in it are then opened relative to its descriptor, never
through a link.

`problem` decides (pure); the rest is the few system calls it takes.
"""
from __future__ import annotations

import errno
import os
import stat

from ..core.errors import NetleakError


def problem(st: os.stat_result, leaf: bool) -> str | None:
    """Why a directory of these attributes is not to be trusted, or None.
    LEAF: the directory itself (a parent may be a sticky directory of
    root's that others may write, as /tmp)."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != 0:
        return f"belongs to uid {st.st_uid}, not root"
    if st.st_mode & 0o022:
        if not leaf and st.st_mode & stat.S_ISVTX:
            return None
        who = "its group and others" if st.st_mode & 0o022 == 0o022 else (
            "its group" if st.st_mode & 0o020 else "others")
        return f"may be written by {who} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir(path: str, what: str, fix: str, create: bool = False,
             mode: int = 0o700) -> int:
    """A descriptor of directory PATH after checking it and every parent up
    to `/` (creating the missing ones with MODE when CREATE). WHAT names it
    in refusals ("run directory"), FIX says what to do instead.
    FileNotFoundError when it is missing and not CREATE."""
    if not os.path.isabs(path):
        path = os.path.abspath(path)
    parts = [p for p in path.split("/") if p]
    fd = os.open("/", _DIR_FLAGS)
    shown = "/"
    try:
        _check(fd, shown, what, fix, leaf=not parts)
        for i, name in enumerate(parts):
            shown = "/" + "/".join(parts[:i + 1])
            leaf = i == len(parts) - 1
            try:
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, mode, dir_fd=fd)
                except FileExistsError:
                    pass        # made meanwhile: checked below like any
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    reason = "is a symbolic link" if e.errno == errno.ELOOP else \
                        "is not a directory"
                    raise NetleakError(f"{what} {path}: {shown} {reason}: {fix}") from None
                raise
            os.close(fd)
            fd = nfd
            _check(fd, shown, what, fix, leaf, path)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _check(fd: int, shown: str, what: str, fix: str, leaf: bool, path: str = "") -> None:
    why = problem(os.fstat(fd), leaf)
    if why:
        where = path if leaf or not path else f"{path}: {shown}"
        raise NetleakError(f"{what} {where} {why}: netleak keeps it only where no "
                           f"other user can write; {fix}")


def check_dir(path: str, what: str, fix: str) -> bool:
    """Whether directory PATH exists; NetleakError when it is not to be trusted."""
    try:
        fd = open_dir(path, what, fix)
    except FileNotFoundError:
        return False
    os.close(fd)
    return True


def open_file(dir_fd: int, name: str, flags: int, mode: int = 0o600,
              where: str = "") -> int:
    """NAME in the directory DIR_FD, never through a link (O_NOFOLLOW):
    a link there is refused with a NetleakError naming WHERE."""
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NetleakError(f"{os.path.join(where, name)} is a symbolic link: netleak "
                               f"never writes through one; remove it") from None
        raise
