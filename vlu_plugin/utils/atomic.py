"""Atomic file writes: a reader (or `--auto_resume` after a kill) sees the old file or the new one, never half.

Every writer of the plugin goes through here: checkpoints and training states, the report and its figures,
`vlu bench`, `vlu restore`, `vlu prepare` and the resolved option copies.
"""
import contextlib
import os
import os.path as osp


@contextlib.contextmanager
def atomic_path(path, suffix=''):
    """Yield a temporary path beside `path` to write to; on success it replaces `path`, on any error it is removed.

    `suffix` ends the temporary name, for writers that infer the format from it (matplotlib's `.png`).
    """
    path = os.fspath(path)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    # the pid keeps two processes writing the same file from sharing a temporary; same folder: rename is atomic
    tmp = f'{path}.tmp{os.getpid()}{suffix}'
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if osp.lexists(tmp):
            os.remove(tmp)


def atomic_write(path, content):
    """Write `content` (str as UTF-8, or bytes) to `path` atomically; returns `path`."""
    data = content.encode('utf-8') if isinstance(content, str) else content
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            f.write(data)
    return os.fspath(path)
