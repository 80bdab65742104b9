"""The daemon's manifest writes what changed: one record file per service and a small index, so a deploy into a
daemon that holds 1,000 services writes no other service's spec; a crash or a full disk mid-save leaves the previous
state whole; a manifest of the earlier one-file format is read (and rewritten as records). Times: bench/overheads.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tether.daemon import store
from tether.daemon.store import Manifest
from tether.errors import StorageFull
from tether.specs import ServiceSpec


def _spec(name: str, env: str = "default", qualname: str = "add") -> ServiceSpec:
    return ServiceSpec.model_validate({"name": name, "env": {"name": env},
                                       "code": {"root": "/srv/code", "import_path": "mod", "qualname": qualname}})


def _records(state: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in (state / "services").iterdir()}


def test_a_deploy_writes_its_own_record_and_the_index_only(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    for i in range(200):
        m.services[f"s{i}"] = _spec(f"s{i}")
        m.methods[f"s{i}"] = {"__call__": "sync"}
    m.save()
    before = _records(tmp_path)
    assert len(before) == 200
    m.services["s7"] = _spec("s7", qualname="sub")  # a redeploy of one service
    m.save()
    after = _records(tmp_path)
    assert len(after) == 200 and len(set(after) - set(before)) == 1  # one new record, the old one of s7 removed
    assert {k: v for k, v in after.items() if k in before} == {k: v for k, v in before.items() if k in after}
    index = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(index["services"]) == sorted(f"s{i}" for i in range(200))
    again = Manifest(tmp_path)
    assert again.services == m.services and again.methods == m.methods


def test_forget_and_rename_keep_records_and_index_in_step(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    m.services.update({"a": _spec("a"), "b": _spec("b")})
    m.methods["a"] = {"__call__": "sync"}
    m.save()
    m.forget("b")
    m.rename("a", "c")
    again = Manifest(tmp_path)
    assert sorted(again.services) == ["c"] and again.services["c"].name == "c"
    assert again.methods == {"c": {"__call__": "sync"}}
    assert len(_records(tmp_path)) == 1


def test_a_failed_save_leaves_the_previous_state_on_disk_and_in_memory(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    m = Manifest(tmp_path)
    m.services["keep"] = _spec("keep")
    m.save()
    before = _records(tmp_path)

    def full(path: Path, data: bytes, **kw: object) -> None:  # the disk fills between the record and the index
        raise StorageFull("no space left", details={"path": str(path)})

    monkeypatch.setattr(store, "write_atomic", full)
    m.services["new"] = _spec("new")
    with pytest.raises(StorageFull):
        m.save()
    assert sorted(m.services) == ["keep"]  # what is not on disk did not happen
    assert _records(tmp_path) == before  # the new record went with the failure
    monkeypatch.undo()
    assert sorted(Manifest(tmp_path).services) == ["keep"]


def test_records_a_crash_left_unnamed_are_removed_at_start(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    m.services["keep"] = _spec("keep")
    m.save()
    (tmp_path / "services" / "lost.0123456789abcdef.json").write_text('{"spec": {}}')  # record, then a crash
    (tmp_path / "services" / ".lost.0123456789abcdef.json.x1").write_text("half")  # a temp file mid-write
    again = Manifest(tmp_path)
    assert sorted(again.services) == ["keep"]
    assert sorted(os.listdir(tmp_path / "services")) == sorted(_records(tmp_path)) and len(_records(tmp_path)) == 1


def test_a_one_file_manifest_of_the_earlier_format_is_read_and_rewritten_as_records(tmp_path: Path) -> None:
    old = {"services": {"add": _spec("add").model_dump(mode="json")}, "methods": {"add": {"__call__": "sync"}},
           "objects": {"blob": "default"}}
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    m = Manifest(tmp_path)
    assert m.services == {"add": _spec("add")} and m.methods == {"add": {"__call__": "sync"}}
    assert m.objects == {"blob": "default"}
    m.save()
    index = json.loads((tmp_path / "manifest.json").read_text())
    assert index["format"] == 2 and isinstance(index["services"]["add"], str)
    assert Manifest(tmp_path).services == m.services
