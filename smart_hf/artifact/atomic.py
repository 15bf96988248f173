"""Crash-safe artifact folders: everything is written into a temporary sibling folder, then renamed into place.

A process killed while saving (pre-emption, OOM kill, Ctrl-C) must never leave a half-written model where a loader
looks for one. `staged_directory` gives the writer an empty folder next to the target (same filesystem, so a rename
is atomic) and publishes it only when the writer finished without an exception:

- target missing or empty: the staged folder *becomes* the target with one ``rename`` -- all or nothing;
- ``replace=True`` (a folder that holds only this artifact, e.g. ``hub_artifact``): the old folder is renamed aside,
  the staged one renamed in, the old one deleted -- a reader sees the old artifact, then the new one, never a mix;
- target with other content (a Trainer ``output_dir`` that also holds checkpoints): each staged file replaces its
  namesake with ``os.replace`` (atomic per file) and ``config.json`` goes last, so a fresh folder only becomes
  loadable once every other file is in place. Files of the target that the artifact does not write are kept.

Every file and folder of the artifact gets the permissions a plain ``open`` / ``mkdir`` would give it under the
process's umask (``0644`` / ``0755`` with the usual ``022``): writers that go through a temporary file (the
safetensors shards of ``save_pretrained``) and the staging folder itself (``mkdtemp``) are created ``0600`` /
``0700``, and a published artifact readable only by its writer breaks a model server running as another user.

Staging folders of processes that died mid-save (``.<name>.tmp-<pid>-*``) are removed by the next save to the same
target; a folder whose pid is still alive is left alone (it may be a concurrent writer).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator

__all__ = ["staged_directory"]

# Written last: stock `from_pretrained` needs it, so a folder without it is never mistaken for a complete model.
_PUBLISH_LAST = "config.json"


@contextlib.contextmanager
def staged_directory(path: str | os.PathLike, replace: bool = False) -> Iterator[str]:
    """Yield an empty temporary folder beside ``path``; on a clean exit publish its content at ``path``.

    Args:
        path: the folder the artifact should end up in (created with its parents if missing).
        replace: the whole folder is this artifact: swap it as one unit, dropping files the new artifact lacks.

    Yields:
        The staging folder to write into. On an exception the staged folder is deleted and ``path`` is untouched;
        the exception propagates.

    Raises:
        ValueError: ``path`` is an existing file.
    """
    target = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(target)
    if os.path.exists(target) and not os.path.isdir(target):
        raise ValueError(f"{target} exists and is a file; pass a folder path for the artifact.")
    os.makedirs(parent, exist_ok=True)
    _remove_stale_staging(parent, name)
    staging = tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=parent)
    try:
        yield staging
        _normalize_modes(staging)
        _fsync_tree(staging)
        _publish(staging, target, replace)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: str, target: str, replace: bool) -> None:
    if not os.path.isdir(target) or not os.listdir(target):
        if os.path.isdir(target):
            os.rmdir(target)  # an empty folder: rename cannot overwrite it portably
        os.rename(staging, target)
    elif replace:
        parent, name = os.path.split(target)
        old = tempfile.mkdtemp(prefix=f".{name}.old-{os.getpid()}-", dir=parent)
        os.rename(target, os.path.join(old, name))
        os.rename(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        entries = sorted(os.listdir(staging), key=lambda entry: entry == _PUBLISH_LAST)
        for entry in entries:
            source, dest = os.path.join(staging, entry), os.path.join(target, entry)
            if os.path.isdir(source) and os.path.isdir(dest):
                shutil.rmtree(dest)  # os.replace cannot overwrite a non-empty folder
            os.replace(source, dest)
    _fsync_dir(os.path.dirname(target))


def _umask_modes(folder: str) -> tuple[int, int]:
    """The modes a new file and a new folder get under this process's umask, read from two probes in ``folder``
    (reading the umask itself means setting it, which is not thread-safe)."""
    probe = os.path.join(folder, f".mode-probe-{os.getpid()}")
    os.mkdir(probe)
    folder_mode = stat.S_IMODE(os.stat(probe).st_mode)
    os.rmdir(probe)
    os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    file_mode = stat.S_IMODE(os.stat(probe).st_mode)
    os.remove(probe)
    return file_mode, folder_mode


def _normalize_modes(staging: str) -> None:
    """Give every file and folder of the staged artifact (and the staging folder, which may become the target) the
    umask's normal modes; an executable file keeps its execute bits (the folder mode)."""
    file_mode, folder_mode = _umask_modes(staging)
    os.chmod(staging, folder_mode)
    for root, dirs, files in os.walk(staging):
        for name in dirs:
            os.chmod(os.path.join(root, name), folder_mode)
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            executable = os.stat(path).st_mode & stat.S_IXUSR
            os.chmod(path, folder_mode if executable else file_mode)


def _remove_stale_staging(parent: str, name: str) -> None:
    pattern = re.compile(rf"^\.{re.escape(name)}\.(?:tmp|old)-(\d+)-")
    for entry in os.listdir(parent):
        match = pattern.match(entry)
        if match and not _pid_alive(int(match.group(1))):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _fsync_tree(folder: str) -> None:
    """Flush file contents to disk before the rename makes them visible (survives an OS crash, not only a kill)."""
    for root, _dirs, files in os.walk(folder):
        for file in files:
            with open(os.path.join(root, file), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(root)


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):  # not every platform/filesystem allows fsync on a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
