"""One running `vlu train` per experiment folder: a lock file holding the pid (and host) of the run.

Without it a second run of the same name archives the first's live folder and both write into the new
one. The lock is `experiments/<name>/vlu.lock`, created atomically (O_EXCL); it is removed when the run
exits, and a lock left by a run that was killed (its pid no longer exists on this host) is taken over.
"""
import atexit
import os
import os.path as osp
import socket

from vlu_plugin.utils.errors import UserError

LOCK_NAME = 'vlu.lock'
_held = set()


def lock_path(folder):
    """Where the lock of the experiment in `folder` lives."""
    return osp.join(folder, LOCK_NAME)


def _read(path):
    """(pid, host) of the lock at `path`, or None when it is absent or unreadable."""
    try:
        with open(path) as f:
            fields = f.read().split()
        return int(fields[0]), (fields[1] if len(fields) > 1 else '')
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid, host):
    """Whether the lock's holder may still run: on this host, whether the pid exists; elsewhere, assume so."""
    if host and host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def live_holder(folder):
    """The pid of another live run holding `folder`, or None."""
    held = _read(lock_path(folder))
    if held is None or held[0] == os.getpid() or not _alive(*held):
        return None
    return held[0]


def check_free(folder):
    """Raise UserError when another live run holds `folder`."""
    pid = live_holder(folder)
    if pid is not None:
        raise UserError(f'{folder} is in use by a running `vlu train` (pid {pid}; lock file {lock_path(folder)}). '
                        'Wait for it to finish or give this run another name; if that process is gone, '
                        'remove the lock file')


def acquire(folder):
    """Take the lock of `folder` (created if needed) for this process; stale locks are taken over."""
    os.makedirs(folder, exist_ok=True)
    path = lock_path(folder)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read(path)
            if held is not None and held[0] == os.getpid():
                return path
            check_free(folder)
            try:  # the holder is gone: its lock is stale
                os.remove(path)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, 'w') as f:
            f.write(f'{os.getpid()} {socket.gethostname()}\n')
        if not _held:
            atexit.register(release_all)
        _held.add(path)
        return path
    check_free(folder)  # lost a race for the stale lock to a live run
    raise UserError(f'{folder}: could not take the lock {path}')


def release_all():
    """Remove the locks this process holds (at exit)."""
    for path in list(_held):
        held = _read(path)
        if held is not None and held[0] == os.getpid():
            try:
                os.remove(path)
            except OSError:
                pass
        _held.discard(path)
