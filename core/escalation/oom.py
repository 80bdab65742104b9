"""Out-of-memory, recognised in exceptions: host and GPU allocation failures become :class:`tether.OutOfMemory`
without importing torch/jax/tensorflow. (Why a dead worker died, and memory limits, are the daemon's:
``tether.daemon.memory``.)
"""

from __future__ import annotations

import errno
import re
import signal
from collections.abc import Mapping
from typing import Any

from tether.errors import OutOfMemory, RemoteError, WorkerDied
from tether.specs import parse_bytes

__all__ = ["OOM_HINT", "classify_exception", "human_bytes", "judge_exit", "matches_oom_text"]

OOM_HINT = (
    "run it on an instance with more memory, or pass on_oom=tether.Escalation(...) to escalate automatically"
)
_MAX_MESSAGE = 2000

# --- exceptions ------------------------------------------------------------------------------------------

# (pattern name, memory kind, certainty, regex). Searched in the exception text; first match wins.
_TEXT_PATTERNS: list[tuple[str, str, str, re.Pattern[str]]] = [
    (name, kind, certainty, re.compile(rx, re.IGNORECASE | re.DOTALL))
    for name, kind, certainty, rx in [
        ("torch_cuda_oom", "gpu", "certain", r"CUDA out of memory"),
        ("torch_hip_oom", "gpu", "certain", r"HIP out of memory"),
        ("torch_mps_oom", "gpu", "certain", r"MPS backend out of memory"),
        ("torch_xpu_oom", "gpu", "certain", r"XPU out of memory"),
        ("nccl_oom", "gpu", "certain", r"nccl\w*Error.{0,400}?(out of memory|Failed to CUDA [cm]alloc)|NCCL.{0,200}?Cuda failure.{0,40}?out of memory"),
        ("cuda_error_oom", "gpu", "certain", r"CUDA error: out of memory|cudaErrorMemoryAllocation|CUDA_ERROR_OUT_OF_MEMORY"),
        ("cublas_alloc_failed", "gpu", "certain", r"CUBLAS_STATUS_ALLOC_FAILED"),
        ("cudnn_alloc_failed", "gpu", "certain", r"CUDNN_STATUS_ALLOC_FAILED"),
        ("cusolver_alloc_failed", "gpu", "certain", r"CUSOLVER_STATUS_ALLOC_FAILED|CUSPARSE_STATUS_ALLOC_FAILED|CUFFT_ALLOC_FAILED"),
        # cuDNN/cuBLAS fail to create their handle when the GPU is already full; the usual cause in training.
        ("cudnn_not_initialized", "gpu", "probable", r"CUDNN_STATUS_NOT_INITIALIZED|CUBLAS_STATUS_NOT_INITIALIZED"),
        ("xla_resource_exhausted", "gpu", "certain", r"RESOURCE_EXHAUSTED:.{0,80}?(out of memory|\bOOM\b|ran out of memory)"),
        ("tensorflow_oom", "gpu", "certain", r"\bOOM when allocating tensor"),
        ("cupy_oom", "gpu", "certain", r"Out of memory allocating [\d,]+ bytes"),
        ("std_bad_alloc", "host", "certain", r"std::bad_alloc"),
        ("enomem", "host", "certain", r"\[Errno 12\] Cannot allocate memory|\bENOMEM\b"),
    ]
]  # fmt: skip

# Exception types recognised by (module prefix, class name), without importing the library.
_TYPE_NAMES: list[tuple[str, str, str]] = [
    ("torch", "OutOfMemoryError", "gpu"),
    ("cupy", "OutOfMemoryError", "gpu"),
    ("tensorflow", "ResourceExhaustedError", "gpu"),
    ("numba", "CudaAPIError", "gpu"),  # only with CUDA_ERROR_OUT_OF_MEMORY in its text (checked below)
]

_SIZE = r"([\d.,]+)\s*([KMGTP]i?B|bytes)"
_UNIT = {"B": 1, "BYTES": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "PIB": 2**50}  # fmt: skip


def classify_exception(exc: BaseException) -> OutOfMemory | None:
    """The :class:`OutOfMemory` that ``exc`` (or an exception it wraps) amounts to, or None if it is not one.

    Looks at the exception's type (by name, so torch need not be importable), its text, a ``RemoteError``'s
    remote type, the chain of ``__cause__``/``__context__`` and exception groups.
    """
    seen: set[int] = set()
    todo: list[tuple[BaseException, str]] = [(exc, "")]
    while todo and len(seen) < 32:
        current, via = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        found = _classify_one(current)
        if found is not None:
            if via and found is not current:
                found.details["via"] = via
            return found
        for attr in ("__cause__", "__context__"):
            nxt = getattr(current, attr, None)
            if isinstance(nxt, BaseException):
                todo.append((nxt, (via + "." if via else "") + attr.strip("_")))
        if isinstance(current, BaseExceptionGroup):
            todo.extend((e, (via + "." if via else "") + "group") for e in current.exceptions)
    return None


def matches_oom_text(text: str) -> tuple[str, str, str] | None:
    """``(pattern, kind, certainty)`` when ``text`` reads like an allocation failure, else None."""
    for name, kind, certainty, rx in _TEXT_PATTERNS:
        if rx.search(text):
            return name, kind, certainty
    return None


def _classify_one(exc: BaseException) -> OutOfMemory | None:
    if isinstance(exc, OutOfMemory):
        return exc
    if isinstance(exc, WorkerDied) and "returncode" in exc.details:
        died = judge_exit(  # re-judge what the daemon saw; gather nothing new here
            int(exc.details["returncode"]),
            memory_limit=exc.details.get("memory_limit"),
            evidence={"oom_kill": 0, **(exc.details.get("evidence") or {})},
        )
        return died if isinstance(died, OutOfMemory) else None
    type_path = f"{type(exc).__module__}.{type(exc).__qualname__}"
    text = _text_of(exc)
    if isinstance(exc, RemoteError) and exc.remote_type:
        type_path = exc.remote_type
        text = f"{text}\n{_last_line(exc.remote_traceback)}"
    details: dict[str, Any] = {"exception_type": type_path, "message": text[:_MAX_MESSAGE]}
    if isinstance(exc, MemoryError) or type_path.rsplit(".", 1)[-1] in ("MemoryError", "_ArrayMemoryError"):
        return _oom("host", "MemoryError", "certain", details, text)
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return _oom("host", "enomem", "certain", details, text)
    match = matches_oom_text(text)
    for prefix, name, kind in _TYPE_NAMES:
        if _type_matches(exc, type_path, prefix, name) and (prefix != "numba" or match):
            return _oom(kind, f"{prefix}.{name}", "certain", details, text)
    if match is not None:
        return _oom(match[1], match[0], match[2], details, text)
    return None


def _type_matches(exc: BaseException, type_path: str, prefix: str, name: str) -> bool:
    if type_path.split(".")[0] == prefix and type_path.rsplit(".", 1)[-1] == name:
        return True
    return any(k.__name__ == name and k.__module__.split(".")[0] == prefix for k in type(exc).__mro__)


def _text_of(exc: BaseException) -> str:
    try:
        text = str(exc) or " ".join(str(a) for a in getattr(exc, "args", ()))
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the classification
        text = ""
    return text if len(text) <= 81920 else text[:65536] + "\n…\n" + text[-16384:]


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _oom(kind: str, pattern: str, certainty: str, details: dict[str, Any], text: str) -> OutOfMemory:
    details.update({"kind": kind, "pattern": pattern, "certainty": certainty})
    details.update(_sizes(text))
    where = "GPU" if kind == "gpu" else "host"
    if "gpu" in details:
        where = f"GPU {details['gpu']}"
    want = (
        f", tried to allocate {human_bytes(details['tried_to_allocate'])}"
        if "tried_to_allocate" in details
        else ""
    )
    short = details["exception_type"].rsplit(".", 1)[-1]
    return OutOfMemory(f"out of {where} memory{want} ({short})", hint=OOM_HINT, details=details)


def _sizes(text: str) -> dict[str, Any]:
    """Numbers a framework put in its OOM message: requested bytes, GPU index, total capacity."""
    out: dict[str, Any] = {}
    m = re.search(r"(?:tried|trying) to allocate\s*" + _SIZE, text, re.IGNORECASE) or re.search(
        r"(?:unable to allocate|out of memory allocating)\s*" + _SIZE, text, re.IGNORECASE
    )
    if m:
        out["tried_to_allocate"] = _to_bytes(m.group(1), m.group(2))
    m = re.search(r"total capacity of\s*" + _SIZE, text, re.IGNORECASE) or re.search(
        _SIZE + r"\s*total capacity", text, re.IGNORECASE
    )
    if m:
        out["total_capacity"] = _to_bytes(m.group(1), m.group(2))
    m = re.search(r"\bGPU\s*(\d+)", text)
    if m:
        out["gpu"] = int(m.group(1))
    return out


def _to_bytes(number: str, unit: str) -> int:
    return int(float(number.replace(",", "")) * _UNIT.get(unit.upper(), 1))


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


# --- dead workers ----------------------------------------------------------------------------------------

_MEMORY_SIGNALS = {signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS}


def judge_exit(
    returncode: int, *, memory_limit: int | str | None = None, evidence: Mapping[str, Any] | None = None,
    vmstat_now: int | None = None,
) -> OutOfMemory | WorkerDied:
    """Why a worker died, from the evidence gathered (nothing is read here): :class:`OutOfMemory` when there is
    memory pressure, else :class:`WorkerDied`.

    ``evidence`` may hold ``oom_kill`` (kills counted by its cgroup), ``vmstat_oom_kill`` (the host's
    ``/proc/vmstat`` oom_kill before the worker started; compared with ``vmstat_now``), ``peak_rss`` or
    ``max_usage`` and ``limit`` (bytes) and ``stderr`` (the worker's last output).
    """
    limit = parse_bytes(memory_limit) if memory_limit is not None else None
    ev: dict[str, Any] = dict(evidence or {})
    sig = _signal_of(returncode)
    details: dict[str, Any] = {"returncode": returncode, "memory_limit": limit, "evidence": ev}
    if sig is not None:
        try:
            details["signal"] = signal.Signals(sig).name
        except ValueError:
            details["signal"] = str(sig)
    reasons: list[str] = []
    if int(ev.get("oom_kill") or 0) > 0:
        reasons.append(f"its memory cgroup counted {ev['oom_kill']} OOM kill(s)")
    if sig in _MEMORY_SIGNALS:
        if vmstat_now is not None and "vmstat_oom_kill" in ev and vmstat_now > int(ev["vmstat_oom_kill"]):
            reasons.append("the kernel OOM killer ran while it was alive (/proc/vmstat oom_kill)")
        peak, cap = ev.get("peak_rss") or ev.get("max_usage"), limit or ev.get("limit")
        if cap and peak and int(peak) >= 0.9 * int(cap):
            reasons.append(f"its peak memory {human_bytes(int(peak))} reached the {human_bytes(int(cap))} limit")
    stderr = str(ev.get("stderr") or "")
    if stderr and (re.search(r"\bMemoryError\b", stderr) or matches_oom_text(stderr)):
        reasons.append("its last output reports an allocation failure")
    if reasons:
        details.update(
            {"kind": "host", "pattern": "worker_killed", "certainty": "certain", "reasons": reasons}
        )
        cap = f" (limit {human_bytes(limit)})" if limit else ""
        return OutOfMemory(
            f"the worker ran out of memory{cap} and was killed: {'; '.join(reasons)}",
            hint=OOM_HINT,
            details=details,
        )
    how = f"signal {details['signal']}" if sig is not None else f"exit code {returncode}"
    return WorkerDied(
        f"the worker died ({how})",
        hint="it restarts on the next call; services deployed to it are restored",
        details=details,
    )


def _signal_of(returncode: int) -> int | None:
    if returncode < 0:
        return -returncode
    if 128 < returncode < 128 + 65:  # shells report death by signal N as 128 + N
        return returncode - 128
    return None
