"""Per-env virtual environments for envs with their own requirements."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import site
import sys
from pathlib import Path

from tether.errors import ConfigError


async def _run(*cmd: str) -> None:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise ConfigError(f"`{' '.join(cmd[:4])} …` failed (exit {proc.returncode}): {out.decode()[-2000:]}",
                          hint="check the env's requirements")


async def ensure_venv(path: Path, reqs: list[str]) -> str:
    """A venv at ``path`` with ``reqs`` installed, that also sees the daemon's own packages (for tether itself)."""
    stamp = hashlib.sha256("\n".join(sorted(reqs)).encode()).hexdigest()
    python = path / "bin" / "python"
    marker = path / ".tether-reqs"
    if python.exists() and marker.exists() and marker.read_text() == stamp:
        return str(python)
    await _run(sys.executable, "-m", "venv", "--without-pip", str(path))
    # the daemon's site-packages come after the env's own, so the env's versions win
    purelib = next(path.glob("lib/python*/site-packages"))
    parents = [p for p in sys.path if p.endswith("site-packages")] + site.getsitepackages()
    lines = [f"import site; site.addsitedir({d!r})" for d in dict.fromkeys(parents)]
    (purelib / "_tether_parent.pth").write_text("\n".join(lines) + "\n")
    uv = shutil.which("uv")
    if uv:
        await _run(uv, "pip", "install", "--python", str(python), *reqs)
    else:
        await _run(sys.executable, "-m", "pip", "--python", str(python), "install", *reqs)
    marker.write_text(stamp)
    return str(python)
