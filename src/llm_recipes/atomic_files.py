"""The one way this project writes a file that something else reads: through a temporary file in the same folder,
renamed over the target, so that a reader (the pipeline runner, a resumed run, a user) sees the old file or the
whole new one, never a part; a run killed mid-write leaves no half-written file behind."""

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomically(path: str | Path, data: bytes | str) -> None:
    """Write `data` (text is written as UTF-8) to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the file is an ordinary output
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """`payload` as indented JSON with sorted keys (what is not JSON is written as its str())."""
    write_atomically(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl_atomic(path: str | Path, rows: list[dict], default=None) -> None:
    """One JSON object per line; `default` converts what JSON cannot hold."""
    write_atomically(path, "".join(json.dumps(row, default=default, ensure_ascii=False) + "\n" for row in rows))
