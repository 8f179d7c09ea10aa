# SPDX-License-Identifier: Apache-2.0
"""qsmflow's on-disk cache of things computed once per template: where it lives, how its
entries are keyed (the contents of the files they come from) and locked."""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    """``$QSMFLOW_CACHE``, by default ``~/.cache/qsmflow``."""
    return Path(os.environ.get('QSMFLOW_CACHE') or '~/.cache/qsmflow').expanduser()


def content_digest(paths, salt: bytes = b'') -> str:
    """SHA-256 (hex) of ``salt`` followed by the bytes of each file in ``paths``.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as f:
    ...     _ = f.write(b'abc'); f.flush()
    ...     content_digest([f.name], b'x') == hashlib.sha256(b'xabc').hexdigest()
    True
    """
    digest = hashlib.sha256(salt)
    for path in paths:
        with open(path, 'rb') as fobj:
            for block in iter(lambda: fobj.read(1 << 20), b''):
                digest.update(block)
    return digest.hexdigest()


@contextmanager
def locked(path):
    """Exclusive advisory lock on ``path`` (POSIX ``flock``; no-op where unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, 'a') as fobj:
        fcntl.flock(fobj, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fobj, fcntl.LOCK_UN)
