"""Atomic file writes and JSONL helpers: nothing already written is lost or half-written."""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def _named(e: OSError, path: Path) -> OSError:
    """The same error, saying which file could not be written (ENOSPC, EACCES name no file)."""
    return type(e)(e.errno, f"cannot write {path}: {e.strerror or e}")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temp file in the same folder and an atomic rename: a
    failure (a full disk, a kill) leaves the old content, and no temp file unless killed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _named(e, path) from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None:
            raise _named(e, path) from e
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write all rows at once (atomically); use `append_jsonl` for logs that grow."""
    return atomic_write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def _cut_torn_tail(path: Path) -> None:
    """Cut a file that does not end with a newline back to its last one: what a process killed
    mid-append leaves is an unfinished row, which the next append must not be glued to."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        block = min(size, 1 << 16)
        while True:  # find the last newline, reading backwards
            f.seek(size - block)
            data = f.read(block)
            cut = data.rfind(b"\n")
            if cut >= 0 or block == size:
                f.truncate(size - block + cut + 1 if cut >= 0 else 0)
                return
            block = min(size, block * 2)


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one row; a line is written whole with one `write` call and flushed (a torn last
    line left by a killed writer is cut first)."""
    path = Path(path)
    line = json.dumps(row, default=str) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            _cut_torn_tail(path)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
    except OSError as e:
        raise _named(e, path) from e


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the rows of a JSONL file; a malformed line raises naming `file:line`, except a last
    line without its newline that does not parse: a row a killed writer never finished, skipped
    with a warning (the run that wrote it recomputes it on resume)."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                if not line.endswith("\n") and not f.read(1):
                    warnings.warn(f"{path}:{lineno}: skipping an unfinished last line (a killed "
                                  "writer's)", RuntimeWarning, stacklevel=2)
                    return
                raise ValueError(f"{path}:{lineno}: malformed JSON line ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield row


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return list(iter_jsonl(path))
