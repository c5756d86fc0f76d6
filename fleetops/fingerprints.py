"""Content hashes: the identity of a model artifact and of training data.

A registered version records the sha256 of its artifact; registering the same
bytes again returns the existing version (idempotent retries), and a server
refuses an artifact whose bytes no longer match.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

_CHUNK = 1 << 20


def directory_sha256(path: str | Path) -> str:
    """sha256 over every file under `path` (relative names and contents, in sorted order)."""
    root = Path(path)
    if root.is_file():
        return _file_digest(root, hashlib.sha256()).hexdigest()
    if not root.is_dir():
        raise FileNotFoundError(f"artifact path {str(root)!r} does not exist")
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        _file_digest(file, digest)
        digest.update(b"\0")
    return digest.hexdigest()


def frame_sha256(df: pd.DataFrame) -> str:
    """A content hash of a table (column names, row contents and order)."""
    row_hashes = pd.util.hash_pandas_object(df, index=False).to_numpy()
    digest = hashlib.sha256(",".join(map(str, df.columns)).encode())
    digest.update(row_hashes.tobytes())
    return digest.hexdigest()


def _file_digest(path: Path, digest: hashlib._Hash) -> hashlib._Hash:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest
