"""Daemon parts in isolation: framing, the call table's budget, the manifest, per-env venvs."""

from __future__ import annotations

import asyncio
import socket
import zipfile
from pathlib import Path

import pytest

import tether
from tether.daemon import protocol as p
from tether.daemon.calls import Call, CallTable
from tether.daemon.store import Manifest
from tether.specs import CodeRef, EnvSpec, ServiceSpec


def test_frames_round_trip_over_a_socket():
    async def go():
        a, b = socket.socketpair()
        ra, wa = await asyncio.open_unix_connection(sock=a)
        rb, wb = await asyncio.open_unix_connection(sock=b)
        big = bytes(range(256)) * 40_000
        p.write_frame(wa, p.CALL, 7, {"name": "f"}, big)
        p.write_frame(wa, p.LOG, 8)

        async def read_two():
            return [await p.read_frame(rb), await p.read_frame(rb)]

        got, _ = await asyncio.wait_for(asyncio.gather(read_two(), wa.drain()), 30)
        wa.close()
        wb.close()
        return got

    (k1, t1, m1, b1), (k2, t2, m2, b2) = asyncio.run(go())
    assert (k1, t1, m1) == (p.CALL, 7, {"name": "f"}) and len(b1) == 10_240_000
    assert (k2, t2, m2, b2) == (p.LOG, 8, {}, b"")


def test_call_table_evicts_oldest_finished_beyond_budget():
    async def go():
        table = CallTable(max_finished=3, max_bytes=10**9, ttl=3600)
        calls = [Call(f"c{i}", "svc", None, False) for i in range(5)]
        for c in calls:
            table.add(c)
        running = Call("running", "svc", None, False)
        table.add(running)
        for c in calls:
            c.add(p.RESULT, {}, b"x")
        return table

    table = asyncio.run(go())
    assert "c0" not in table.calls and "c1" not in table.calls
    assert table.get("c0").summary()["result_gone"] and table.attachable("c1").state == "succeeded"  # tombstones
    assert all(table.get(f"c{i}") is not None for i in (2, 3, 4))
    assert table.get("running") is not None


def test_manifest_survives_a_restart(tmp_path):
    m = Manifest(tmp_path)
    spec = ServiceSpec(name="f", env=EnvSpec(name="e"), code=CodeRef(import_path="m", qualname="f"))
    m.services["f"] = spec
    m.put_object("obj", "e", b"pickled")
    m.save()
    again = Manifest(tmp_path)
    assert again.services["f"] == spec and again.objects == {"obj": "e"}
    again.rename("obj", "obj2")
    assert Manifest(tmp_path).object_path("obj2").read_bytes() == b"pickled"
    with pytest.raises(ValueError):
        again.object_path("../escape")


def _tiny_wheel(directory: Path) -> Path:
    """A hand-made wheel (no build step, no network) of a package `tinypkg` with VALUE = 42."""
    wheel = directory / "tinypkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("tinypkg/__init__.py", "VALUE = 42\n")
        z.writestr("tinypkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n")
        z.writestr("tinypkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  "Tag: py3-none-any\n")
        z.writestr("tinypkg-1.0.dist-info/RECORD", "")
    return wheel


def tinypkg_value():
    import tinypkg

    return tinypkg.VALUE


def test_env_with_requirements_gets_its_own_venv(local_cluster, tmp_path):
    wheel = _tiny_wheel(tmp_path)
    f = tether.function(tinypkg_value).to(local_cluster, env=tether.env(name="withreqs", reqs=[str(wheel)]))
    assert f() == 42
    with pytest.raises(ModuleNotFoundError):
        tether.function(tinypkg_value).to(local_cluster, name="noreqs")()
