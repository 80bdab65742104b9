"""The daemon's manifest stays small: the records of the services deployed last inline, every other service's in a
file of records written once, so a deploy into a daemon that holds 1,000 services rewrites no other service's spec;
a crash or a full disk mid-save leaves the previous state whole; a manifest of the earlier one-file format is read.
Times: bench/overheads.py."""

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


def _files(state: Path) -> dict[str, int]:
    """The files of records, by name, with their inode (a rewritten file gets a new one)."""
    return {p.name: p.stat().st_ino for p in (state / "services").iterdir()}


def _inline(state: Path) -> list[str]:
    index = json.loads((state / "manifest.json").read_text())
    return sorted(n for n, e in index["services"].items() if not isinstance(e, str))


def test_a_deploy_writes_a_small_manifest_and_rewrites_no_file_of_records(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    for i in range(300):  # one deploy after the other, as a daemon filling up
        m.services[f"s{i}"] = _spec(f"s{i}")
        m.methods[f"s{i}"] = {"__call__": "sync"}
        m.save()
        assert len(_inline(tmp_path)) <= store.INLINE_MAX
    before = _files(tmp_path)
    assert 0 < len(before) <= 300 // store.INLINE_MAX
    m.services["s7"] = _spec("s7", qualname="sub")  # a redeploy of one service: its record goes inline
    m.save()
    assert "s7" in _inline(tmp_path) and _files(tmp_path) == before
    size = (tmp_path / "manifest.json").stat().st_size
    assert size < 300 * 64 + store.INLINE_MAX * 1024  # names and file names, and the few inline records
    again = Manifest(tmp_path)
    assert again.services == m.services and again.methods == m.methods
    assert again.services["s7"].code.qualname == "sub"


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


def test_a_file_of_records_no_service_needs_is_removed(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    for i in range(store.INLINE_MAX + 1):
        m.services[f"s{i}"] = _spec(f"s{i}")
    m.save()
    assert len(_files(tmp_path)) == 1 and _inline(tmp_path) == []
    for i in range(store.INLINE_MAX + 1):
        m.forget(f"s{i}")
    assert _files(tmp_path) == {} and Manifest(tmp_path).services == {}


@pytest.mark.parametrize("new", [1, store.INLINE_MAX + 1])  # inline only; and a new file of records first
def test_a_failed_save_leaves_the_previous_state_on_disk_and_in_memory(tmp_path: Path, new: int,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    m = Manifest(tmp_path)
    m.services["keep"] = _spec("keep")
    m.save()
    before, index = _files(tmp_path), (tmp_path / "manifest.json").read_bytes()

    def full(path: Path, data: bytes, **kw: object) -> None:  # the disk is full when the manifest is written
        raise StorageFull("no space left", details={"path": str(path)})

    monkeypatch.setattr(store, "write_atomic", full)
    for i in range(new):
        m.services[f"new{i}"] = _spec(f"new{i}")
    with pytest.raises(StorageFull):
        m.save()
    assert sorted(m.services) == ["keep"]  # what is not on disk did not happen
    assert _files(tmp_path) == before and (tmp_path / "manifest.json").read_bytes() == index
    monkeypatch.undo()
    assert sorted(Manifest(tmp_path).services) == ["keep"]


def test_files_a_crash_left_unnamed_are_removed_at_start(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    m.services["keep"] = _spec("keep")
    m.save()
    (tmp_path / "services" / "0123456789abcdef01234567.json").write_text("{}")  # a file of records, then a crash
    (tmp_path / "services" / ".0123456789abcdef01234567.json.x1").write_text("half")  # a temp file mid-write
    again = Manifest(tmp_path)
    assert sorted(again.services) == ["keep"]
    assert os.listdir(tmp_path / "services") == []


def test_a_one_file_manifest_of_the_earlier_format_is_read_and_rewritten_as_records(tmp_path: Path) -> None:
    old = {"services": {"add": _spec("add").model_dump(mode="json")}, "methods": {"add": {"__call__": "sync"}},
           "objects": {"blob": "default"}}
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    m = Manifest(tmp_path)
    assert m.services == {"add": _spec("add")} and m.methods == {"add": {"__call__": "sync"}}
    assert m.objects == {"blob": "default"}
    m.save()
    index = json.loads((tmp_path / "manifest.json").read_text())
    assert index["format"] == 2 and index["services"]["add"]["spec"]["name"] == "add"
    assert Manifest(tmp_path).services == m.services
