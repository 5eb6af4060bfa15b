"""What a long run needs from the machine around it, the same in 02, 03 and 05.

- One trainer per run folder: `RunLock` holds an OS-level lock (fcntl.lockf, a POSIX record lock,
  which also holds on NFS where flock may not) on RUN/.lock for the whole run. It is taken before
  anything in the folder is touched (stray temporary files, log trimming); the kernel drops it when
  the process ends in any way, so a killed run never leaves a stale lock. A second trainer gets one
  line naming the PID that holds it. Readers (generate, 04, FID) take no lock.
- Files are written whole: `write_atomic` (a temporary file in the same folder, fsync, rename), so
  a reader or a crash sees the old file or the new one, never half of one; log lines are appended
  as one write of one whole line (`append_line`) and made durable at each checkpoint (`sync`).
- A write that fails because the machine cannot take it (disk full, read-only or vanished folder,
  no permission, I/O error) stops the run with one line naming the path and the errno
  (`write_failure`); every earlier checkpoint and log line stays, and `--resume` continues once
  the disk is back.
- Out of memory is one line too: `out_of_memory` tells the GPU's and the CPU's from other errors,
  for each script to name the flag that lowers its memory.
"""
import errno
import fcntl
import os
import re
import tempfile

import torch

import ops

LOCK_NAME = ".lock"
# The errors of the machine rather than of the program: the run stops with one line for these.
WRITE_ERRNOS = {errno.ENOSPC: "ENOSPC", errno.EROFS: "EROFS", errno.EACCES: "EACCES", errno.EIO: "EIO",
                errno.ENOENT: "ENOENT", errno.EDQUOT: "EDQUOT", errno.EPERM: "EPERM", errno.ESTALE: "ESTALE"}


class RunLocked(SystemExit):
    """Another live process trains in this run folder (one line, exit status 1)."""

    def __init__(self, message):
        super().__init__("error: " + message)


class RunLock:
    """An exclusive lock on RUN/.lock for as long as this object lives (or until `release`).

    The lock file holds the holder's PID, for the message a second trainer gets; the file itself
    may stay after the run (it is not the lock: the kernel's record lock on it is).
    """

    def __init__(self, folder):
        self.folder = os.path.abspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        if os.path.exists(self.folder) and not os.path.isdir(self.folder):  # makedirs would say "File exists"
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), folder)
        os.makedirs(self.folder, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(self.fd)
                raise
            holder = _read_pid(self.fd)
            os.close(self.fd)
            self.fd = None
            raise RunLocked(f"{self.folder}: another training process (PID {holder or 'unknown'}) is writing this "
                            f"run; wait for it to end or stop it (a second trainer would overwrite its "
                            f"checkpoints and log)") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the record lock
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False


def _read_pid(fd):
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def write_atomic(path, write, mode="wb"):
    """Write a file whole: write(f) fills a temporary file in the same folder, which is flushed,
    fsynced and renamed over `path`. On any failure the temporary file goes and `path` is as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path), dir=folder)
    try:
        ops.chmod_like_open(fd)  # mkstemp makes 0600; the user's umask decides
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not e.filename:  # f.write's errors name no file: name `path`
            raise OSError(e.errno, e.strerror, path) from None
        raise


def save_image(img, path):
    """A PIL image written whole (write_atomic), in the format of path's extension."""
    fmt = {".png": "PNG", ".gif": "GIF", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(os.path.splitext(path)[1].lower(), "PNG")
    write_atomic(path, lambda f: img.save(f, format=fmt))


def append_line(path, line):
    """One whole line appended with one write (O_APPEND), so a reader or a crash never sees half of
    it mixed into another; a short write (disk full) is an error, like a failed one."""
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        n = os.write(fd, data)
        if n != len(data):
            raise OSError(errno.ENOSPC, "No space left on device (short write)", path)
    except OSError as e:
        raise OSError(e.errno, e.strerror, e.filename or path) from None
    finally:
        os.close(fd)


def sync(path):
    """fsync a file that lines were appended to (at each checkpoint), if it exists."""
    if os.path.isfile(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def is_write_failure(e):
    return isinstance(e, OSError) and e.errno in WRITE_ERRNOS


def write_failure(e, run, script):
    """The one line of a run stopped by the machine: path, errno, what is kept, how to go on."""
    what = WRITE_ERRNOS.get(e.errno, str(e.errno))
    path = e.filename or run
    hint = {"ENOSPC": "free disk space", "EDQUOT": "free quota", "EROFS": "make the folder writable again",
            "EACCES": "give write permission", "EPERM": "give write permission",
            "ENOENT": "bring the folder back", "ESTALE": "remount the share", "EIO": "check the disk"}.get(what, "fix it")
    return (f"error: {path}: {e.strerror or e} ({what}) while writing the run; the run stopped, its earlier "
            f"checkpoints and log lines are intact. {hint[0].upper() + hint[1:]}, then continue with: "
            f"python {script} train --resume {run}")


# CUDA's out-of-memory error (torch.OutOfMemoryError in newer torch)
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


def out_of_memory(e):
    """("GPU" or "CPU", what could not be had) when `e` is running out of memory: CUDA's
    OutOfMemoryError, torch's CPU allocator (a RuntimeError naming the bytes asked), Python's
    MemoryError; else None."""
    text = " ".join(str(e).split())
    if isinstance(e, OUT_OF_MEMORY):
        asked = re.search(r"Tried to allocate ([\d.]+ [KMGT]?i?B)", text)
        return "GPU", f"CUDA could not allocate {asked[1]}" if asked else text[:100]
    asked = re.search(r"can't allocate memory: you tried to allocate (\d+) bytes", text)
    if isinstance(e, RuntimeError) and asked:
        return "CPU", f"the allocator could not give {int(asked[1]) / 2 ** 30:.2f} GiB"
    if isinstance(e, MemoryError):
        return "CPU", "MemoryError"
    return None
