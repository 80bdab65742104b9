"""Functions the escalation tests deploy to local ladder clusters (imported by path in the workers)."""

from __future__ import annotations

import os

# PyTorch's message for a CUDA OOM, verbatim (torch 2.4+), raised as the RuntimeError torch raises.
TORCH_CUDA_OOM = (
    "CUDA out of memory. Tried to allocate 1.95 GiB. GPU 0 has a total capacity of 14.57 GiB of which 1.58 GiB "
    "is free. Including non-PyTorch memory, this process has 12.98 GiB memory in use. Of the allocated memory "
    "12.02 GiB is allocated by PyTorch, and 33.93 MiB is reserved by PyTorch but unallocated. If reserved but "
    "unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid "
    "fragmentation.  See documentation for Memory Management  "
    "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
)


def allocate(mib: int) -> dict[str, int]:
    """Allocate and touch ``mib`` MiB; report the size and the worker's pid."""
    data = b"\x01" * (mib * 2**20)
    return {"mib": len(data) // 2**20, "pid": os.getpid()}


def worker_pid() -> int:
    return os.getpid()


def fail(message: str) -> None:
    raise ValueError(message)


def cuda_oom_below(mib: int) -> str:
    """Raise PyTorch's CUDA OOM unless this worker's memory limit is at least ``mib`` MiB."""
    limit = int(os.environ.get("TETHER_MEMORY_LIMIT") or 0)
    if limit < mib * 2**20:
        raise RuntimeError(TORCH_CUDA_OOM)
    return f"fits in {limit // 2**20} MiB"


def allocate_then_count(mib: int, n: int = 3):  # noqa: ANN201 - a generator service
    """Allocate ``mib`` MiB before the first item (so an OOM comes before anything streamed), then yield."""
    data = b"\x01" * (mib * 2**20)
    for i in range(n):
        yield i, len(data) // 2**20


async def aallocate(mib: int) -> dict[str, int]:
    """:func:`allocate` as a coroutine function (the daemon runs it on the worker's loop)."""
    return allocate(mib)
