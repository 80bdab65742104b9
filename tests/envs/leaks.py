"""Where a secret's value leaked to: the files under a folder that hold it (the secret stores themselves aside)."""

from __future__ import annotations

from pathlib import Path


def files_holding(root: Path, value: str, *, skip: tuple[str, ...] = ("secrets",)) -> list[str]:
    """Files under ``root`` holding ``value``, apart from those under a folder named in ``skip``."""
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and not any(part in skip for part in p.relative_to(root).parts):
            try:
                if value.encode() in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                continue
    return hits
