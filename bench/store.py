"""Content-addressed artifact store: ``<root>/<key[:2]>/<key>/<kind>.pt``.

Writes go to a temporary file in the same folder, are fsynced and renamed, so a killed process never leaves a
half-written artifact under its final name; reads verify the sha256 recorded in the database before use.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class CorruptArtifact(RuntimeError):
    """An artifact is missing or its checksum does not match the database."""


@dataclass(frozen=True)
class ArtifactRecord:
    kind: str
    path: str            # relative to the store root
    sha256: str
    bytes: int


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ArtifactStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str, kind: str) -> Path:
        return self.root / key[:2] / key / f"{kind}.pt"

    def put(self, key: str, kind: str, obj: Any) -> ArtifactRecord:
        """Serialise ``obj`` with torch.save, write atomically, return its record."""
        final = self.path(key, kind)
        final.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(obj, buf)
        data = buf.getvalue()
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{kind}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ArtifactRecord(kind, str(final.relative_to(self.root)), hashlib.sha256(data).hexdigest(), len(data))

    def verify(self, rec: ArtifactRecord) -> bool:
        p = self.root / rec.path
        return p.is_file() and p.stat().st_size == rec.bytes and sha256_file(p) == rec.sha256

    def get(self, rec: ArtifactRecord) -> Any:
        p = self.root / rec.path
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise CorruptArtifact(f"artifact {rec.path} is missing") from None
        if hashlib.sha256(data).hexdigest() != rec.sha256:
            raise CorruptArtifact(f"artifact {rec.path} does not match its recorded sha256")
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
