"""classify_exception: every way a framework reports running out of memory becomes tether.OutOfMemory."""

from __future__ import annotations

import errno
import pickle

import pytest

import tether.errors as errors
from tether.oom import classify_exception, matches_oom_text

# Messages as the libraries print them (torch 2.4+, cuBLAS/cuDNN via torch, NCCL via torch.distributed, XLA).
TORCH_CUDA_OOM = (
    "CUDA out of memory. Tried to allocate 1.95 GiB. GPU 0 has a total capacity of 14.57 GiB of which 1.58 GiB "
    "is free. Process 2493055 has 12.02 GiB memory in use. Including non-PyTorch memory, this process has "
    "966.00 MiB memory in use. Of the allocated memory 734.07 MiB is allocated by PyTorch, and 33.93 MiB is "
    "reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting "
    "PYTORCH_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory Management"
    "  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
)
TORCH_CUDA_OOM_OLD = (
    "CUDA out of memory. Tried to allocate 20.00 MiB (GPU 1; 15.78 GiB total capacity; 14.56 GiB already "
    "allocated; 3.12 MiB free; 14.70 GiB reserved in total by PyTorch)"
)
NCCL_OOM = (
    "NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1970, unhandled system error (run with "
    "NCCL_DEBUG=INFO for details), NCCL version 2.19.3\nncclSystemError: System call (e.g. socket, malloc) or "
    "external library call failed or device error. \nLast error:\nCuda failure 'out of memory'"
)
NCCL_CALLOC = (
    "NCCL error in: ProcessGroupNCCL.cpp:1331, unhandled system error, NCCL version 2.18.1\n"
    "ncclSystemError: System call (e.g. socket, malloc) or external library call failed or device error. \n"
    "Last error:\nFailed to CUDA calloc 6291456 bytes"
)


def _typed(module: str, name: str, base: type[BaseException] = RuntimeError) -> type[BaseException]:
    """A class that looks like a library's exception type (same module and name) without the library."""
    return type(name, (base,), {"__module__": module})


@pytest.mark.parametrize(
    ("exc", "pattern", "kind"),
    [
        (MemoryError(), "MemoryError", "host"),
        (MemoryError("Unable to allocate 600. MiB for an array with shape (600, 1048576)"), "MemoryError", "host"),
        (_typed("torch", "OutOfMemoryError")(TORCH_CUDA_OOM), "torch.OutOfMemoryError", "gpu"),
        (_typed("torch.cuda", "OutOfMemoryError")("whatever text"), "torch.OutOfMemoryError", "gpu"),
        (RuntimeError(TORCH_CUDA_OOM), "torch_cuda_oom", "gpu"),
        (RuntimeError(TORCH_CUDA_OOM_OLD), "torch_cuda_oom", "gpu"),
        (RuntimeError("HIP out of memory. Tried to allocate 2.00 GiB"), "torch_hip_oom", "gpu"),
        (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"), "cuda_error_oom", "gpu"),
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), "cublas_alloc_failed", "gpu"),
        (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), "cudnn_alloc_failed", "gpu"),
        (RuntimeError("cuDNN error: CUDNN_STATUS_NOT_INITIALIZED"), "cudnn_not_initialized", "gpu"),
        (_typed("torch.distributed", "DistBackendError")(NCCL_OOM), "nccl_oom", "gpu"),
        (_typed("torch.distributed", "DistBackendError")(NCCL_CALLOC), "nccl_oom", "gpu"),
        (_typed("jaxlib.xla_extension", "XlaRuntimeError")("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 17179869184 bytes."), "xla_resource_exhausted", "gpu"),
        (_typed("jax.errors", "JaxRuntimeError")("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 30.55GiB."), "xla_resource_exhausted", "gpu"),
        (_typed("tensorflow.python.framework.errors_impl", "ResourceExhaustedError", Exception)("OOM when allocating tensor with shape[8192,8192]"), "tensorflow.ResourceExhaustedError", "gpu"),
        (_typed("cupy.cuda.memory", "OutOfMemoryError", Exception)("Out of memory allocating 1,073,741,824 bytes (allocated so far: 0 bytes)."), "cupy.OutOfMemoryError", "gpu"),
        (RuntimeError("terminate called after throwing an instance of 'std::bad_alloc'"), "std_bad_alloc", "host"),
        (OSError(errno.ENOMEM, "Cannot allocate memory"), "enomem", "host"),
    ],
)  # fmt: skip
def test_each_known_oom_becomes_out_of_memory_with_what_was_seen(
    exc: BaseException, pattern: str, kind: str
) -> None:
    oom = classify_exception(exc)
    assert isinstance(oom, errors.OutOfMemory)
    assert oom.details["pattern"] == pattern
    assert oom.details["kind"] == kind
    assert oom.details["exception_type"].endswith(type(exc).__name__)
    assert oom.retryable is True and oom.hint


def test_torch_numbers_are_parsed_into_details() -> None:
    oom = classify_exception(RuntimeError(TORCH_CUDA_OOM))
    assert oom is not None
    assert oom.details["tried_to_allocate"] == int(1.95 * 2**30)
    assert oom.details["total_capacity"] == int(14.57 * 2**30)
    assert oom.details["gpu"] == 0
    assert "GPU 0" in oom.message and "1.95 GiB" in oom.message
    old = classify_exception(RuntimeError(TORCH_CUDA_OOM_OLD))
    assert old is not None and old.details["gpu"] == 1 and old.details["tried_to_allocate"] == 20 * 2**20
    assert old.details["total_capacity"] == int(15.78 * 2**30)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad config"),
        RuntimeError("Expected all tensors to be on the same device, but found at least two devices"),
        RuntimeError("CUDA error: device-side assert triggered"),
        RuntimeError("NCCL error: ncclSystemError: socket connection refused"),
        KeyError("memory"),
        OSError(errno.ENOENT, "No such file"),
        _typed("tensorflow.python.framework.errors_impl", "InvalidArgumentError", Exception)(
            "shape mismatch"
        ),
        errors.WorkerDied("the worker died (signal SIGSEGV)", details={"returncode": -11, "evidence": {}}),
        KeyboardInterrupt(),
    ],
)
def test_other_errors_are_not_out_of_memory(exc: BaseException) -> None:
    assert classify_exception(exc) is None


def test_oom_is_found_through_the_cause_chain_and_groups() -> None:
    try:
        try:
            raise MemoryError
        except MemoryError as inner:
            raise ValueError("training step failed") from inner
    except ValueError as outer:
        oom = classify_exception(outer)
    assert oom is not None and oom.details["via"] == "cause"
    group = ExceptionGroup("ranks failed", [ValueError("x"), RuntimeError(TORCH_CUDA_OOM)])
    found = classify_exception(group)
    assert found is not None and found.details["via"] == "group"


def test_a_chain_that_loops_terminates() -> None:
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert classify_exception(a) is None


def test_remote_error_for_a_type_missing_locally_is_classified_by_its_remote_type_and_text() -> None:
    by_type = errors.RemoteError(
        "OutOfMemoryError: boom", details={"remote_type": "torch.OutOfMemoryError", "traceback": "..."}
    )
    assert classify_exception(by_type) is not None
    by_text = errors.RemoteError(
        "XlaRuntimeError: failed",
        details={"remote_type": "jaxlib.xla_extension.XlaRuntimeError",
                 "traceback": "Traceback...\nXlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8.00GiB."},
    )  # fmt: skip
    assert classify_exception(by_text) is not None
    unrelated = errors.RemoteError("ValueError: nope", details={"remote_type": "builtins.ValueError"})
    assert classify_exception(unrelated) is None


def test_out_of_memory_passes_through_and_survives_pickling() -> None:
    original = errors.OutOfMemory("out of GPU memory", details={"kind": "gpu"})
    assert classify_exception(original) is original
    oom = classify_exception(RuntimeError(TORCH_CUDA_OOM))
    again = pickle.loads(pickle.dumps(oom))
    assert isinstance(again, errors.OutOfMemory) and again.details == oom.details


def test_worker_died_with_oom_evidence_is_out_of_memory() -> None:
    died = errors.WorkerDied("died", details={"returncode": -9, "memory_limit": 256 * 2**20,
                                              "evidence": {"oom_kill": 1}})  # fmt: skip
    oom = classify_exception(died)
    assert oom is not None and oom.details["signal"] == "SIGKILL"


def test_text_matcher_is_specific() -> None:
    assert matches_oom_text("torch.OutOfMemoryError: CUDA out of memory.") is not None
    assert matches_oom_text("we ran out of memory budget for the sprint") is None
    assert matches_oom_text("RESOURCE_EXHAUSTED: rate limit") is None
