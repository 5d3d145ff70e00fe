"""Results JSON files that several benchmark processes update at once (one per seed or pair).

:func:`update_locked` reads the file under an exclusive ``fcntl`` lock (``<file>.lock`` beside
it), applies the caller's merge and replaces the file atomically (a temporary sibling renamed
into place), so two processes never lose each other's rows and a reader never sees half a file.
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any, Callable


def update_locked(path: Path, merge: Callable[[Any], Any], indent: int = 1) -> Any:
    """``merge(what is on disk, or None)`` -> the new content, written to ``path``; returns it."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        new = merge(json.loads(path.read_text()) if path.is_file() else None)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(new, indent=indent, sort_keys=True))
        tmp.replace(path)
    return new
