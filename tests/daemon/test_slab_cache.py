"""A worker's cache of lent slab mappings (``tether.daemon.slabs.SlabCache``), on real files in /dev/shm."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tether.daemon import protocol as p
from tether.daemon.slabs import ARGS_HEADER, MappedFile, SlabCache
from tether.errors import ConfigError

pytestmark = pytest.mark.skipif(p.SHM_DIR is None, reason="needs a writable /dev/shm")
MiB = 1024 * 1024


@pytest.fixture
def files():
    made: list[MappedFile] = []

    def make(size: int = 0) -> MappedFile:
        f = MappedFile.create()
        f.reserve(size)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close(unlink=True)


def test_a_file_is_mapped_once_and_follows_its_growth(files):
    lent = files(MiB)
    cache = SlabCache()
    first = cache.get(lent.path, ARGS_HEADER)
    assert cache.get(lent.path, ARGS_HEADER) is first and len(cache) == 1
    lent.reserve(3 * MiB)  # the client grew it and wrote more
    lent.map[3 * MiB - 1] = 9
    view = first.view(3 * MiB)
    assert view[3 * MiB - 1] == 9
    view.release()
    cache.close()


def test_the_least_recently_used_files_go_past_the_count_or_byte_limit(files):
    a, b, c = files(4 * MiB), files(4 * MiB), files(4 * MiB)
    by_count = SlabCache(limit=2)
    ma = by_count.get(a.path, ARGS_HEADER)
    by_count.get(b.path, ARGS_HEADER)
    by_count.get(c.path, ARGS_HEADER)
    assert len(by_count) == 2 and ma.map is None  # a was closed
    by_count.close()

    by_bytes = SlabCache(max_bytes=6 * MiB)  # a worker under a memory limit
    ma = by_bytes.get(a.path, ARGS_HEADER)
    mb = by_bytes.get(b.path, ARGS_HEADER)
    assert len(by_bytes) == 1 and ma.map is None and mb.map is not None
    big = files(8 * MiB)
    assert by_bytes.get(big.path, ARGS_HEADER).size == 8 * MiB  # the file in use stays, even past the limit
    assert len(by_bytes) == 1
    by_bytes.close()


def test_files_their_client_removed_are_closed(files):
    a, b = files(MiB), files(MiB)
    cache = SlabCache()
    ma = cache.get(a.path, ARGS_HEADER)
    cache.get(b.path, ARGS_HEADER)
    os.unlink(a.path)
    assert cache.sweep() == 1 and ma.map is None and len(cache) == 1
    with pytest.raises(ConfigError):  # gone: a lent path that no longer exists is refused
        cache.get(a.path, ARGS_HEADER)
    cache.close()


def test_a_writer_grows_its_slab_across_writes(files):
    from tether.daemon.slabs import SlabWriter

    slab = files()
    writer = SlabWriter(slab)
    assert writer.write(b"") == 0 and slab.size == 0  # nothing written, nothing mapped
    chunks = [b"a" * 100, memoryview(b"b" * (2 * MiB)), bytearray(b"c" * 10)]
    for chunk in chunks:
        writer.write(chunk)
    assert writer.pos == 100 + 2 * MiB + 10 and slab.size >= writer.pos and slab.size % MiB == 0
    view = slab.view(writer.pos)
    assert bytes(view) == b"".join(bytes(c) for c in chunks)
    view.release()


@pytest.mark.parametrize(("env", "limit", "kept"), [
    ("256", None, 256 * MiB), ("0", None, 0), ("16", None, 0),
    ("256", 512 * MiB, 128 * MiB), ("256", 100 * MiB, 0),  # a quarter of a memory limit, never under 32 MiB
])
def test_freed_memory_kept_is_bounded_and_never_lowers_glibcs_own(env, limit, kept):
    script = ("from tether.daemon.slabs import keep_freed_memory; import sys; "
              f"print(keep_freed_memory({limit!r}))")
    out = subprocess.run([sys.executable, "-c", script], env={**os.environ, "TETHER_MALLOC_KEEP_MB": env},
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert int(out) == kept
