"""Several processes on one registry: save in one and load in another; 8 concurrent savers lose no version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tether.registry import open_registry

SAVER = textwrap.dedent(
    """
    import json, sys
    from tether.registry import open_registry
    db, worker, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    reg = open_registry(db=db)
    got = []
    for i in range(count):
        v = reg.save("shared", {"kind": "function", "code": {"code_hash": f"w{worker}-{i}"}})
        got.append(v.version)
    reg.close()
    print(json.dumps(got))
    """
)


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )


def test_saved_in_one_process_loaded_in_another(db_url: str) -> None:
    save = _python(
        "import sys, json; from tether.registry import open_registry\n"
        "r = open_registry(db=sys.argv[1])\n"
        "v = r.save('embed', {'kind': 'env', 'name': 'e', 'reqs': ['numpy==2.0']})\n"
        "r.tag('embed', v.version, 'prod'); print(v.version)",
        db_url,
    )
    out, err = save.communicate(timeout=120)
    assert save.returncode == 0, err
    load = _python(
        "import sys, json; from tether.registry import open_registry\n"
        "v = open_registry(db=sys.argv[1]).get('alice/embed@prod'); print(json.dumps(v.model_dump(mode='json')))",
        db_url,
    )
    out2, err2 = load.communicate(timeout=120)
    assert load.returncode == 0, err2
    loaded = json.loads(out2)
    assert loaded["version"] == int(out) == 1
    assert loaded["config"] == {"kind": "env", "name": "e", "reqs": ["numpy==2.0"]}
    assert (loaded["saved_by"], loaded["tags"]) == ("alice", ["prod"])


def test_eight_concurrent_savers_lose_no_version(db_url: str) -> None:
    workers, per_worker = 8, 12
    open_registry(db=db_url).close()  # schema first: this test races the versions (the next one the schema)
    procs = [_python(SAVER, db_url, str(w), str(per_worker)) for w in range(workers)]
    seen: list[int] = []
    for p in procs:
        out, err = p.communicate(timeout=170)
        assert p.returncode == 0, err
        mine = json.loads(out)
        assert mine == sorted(mine)  # each saver sees its own versions increase
        seen += mine
    total = workers * per_worker
    assert sorted(seen) == list(range(1, total + 1))  # every save got its own number, none reused
    history = open_registry(db=db_url).history("shared")
    assert [v.version for v in history] == list(range(1, total + 1))
    hashes = {v.code_hash for v in history}
    assert hashes == {f"w{w}-{i}" for w in range(workers) for i in range(per_worker)}


def test_eight_processes_create_the_schema_at_once(db_url: str) -> None:
    procs = [_python(SAVER, db_url, str(w), "1") for w in range(8)]
    for p in procs:
        _, err = p.communicate(timeout=170)
        assert p.returncode == 0, err
    assert sorted(v.code_hash or "" for v in open_registry(db=db_url).history("shared")) == [
        f"w{w}-0" for w in range(8)
    ]


def _child_saves(db_url: str) -> None:
    import os

    import tether.registry as treg

    reg = treg.get_registry()
    reg.save("forked", {"kind": "env", "name": "child"})
    reg.record_call(treg.CallRecord(name="forked", version=2, call_id="from-child", duration_s=1.0))
    reg.flush()
    # the work is done and flushed: leave without running interpreter shutdown, which in a child forked from the
    # full test session trips over state other test modules left in this process (Prefect's server threads)
    os._exit(0)


def test_a_forked_child_uses_its_own_connections_and_writer(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import multiprocessing

    import tether.registry as treg

    monkeypatch.setenv("TETHER_REGISTRY_DB", db_url)
    parent = treg.get_registry()
    parent.save("forked", {"kind": "env", "name": "parent"})
    parent.record_call(treg.CallRecord(name="forked", version=1, call_id="from-parent", duration_s=1.0))
    child = multiprocessing.get_context("fork").Process(target=_child_saves, args=(db_url,))
    child.start()
    child.join(120)
    assert child.exitcode == 0
    assert [v.config["name"] for v in parent.history("forked")] == ["parent", "child"]
    assert {(r.version, r.calls) for r in parent.usage("forked")} == {(1, 1), (2, 1)}


def test_forking_while_other_threads_write_never_hangs_the_child(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import multiprocessing
    import threading

    import tether.registry as treg

    monkeypatch.setenv("TETHER_REGISTRY_DB", db_url)
    parent = treg.get_registry()
    parent.save("forked", {"kind": "env", "name": "parent"})
    stop = threading.Event()

    def busy(tag: str) -> None:
        i = 0
        while not stop.is_set():
            parent.record_call(treg.CallRecord(name="forked", version=1, call_id=f"{tag}{i}"))
            if i % 20 == 0:
                parent.save("forked", {"kind": "env", "name": "parent"})
            i += 1

    threads = [threading.Thread(target=busy, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    try:
        for _ in range(5):
            child = multiprocessing.get_context("fork").Process(target=_child_saves, args=(db_url,))
            child.start()
            child.join(120)
            assert child.exitcode == 0
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert sum(v.config["name"] == "child" for v in parent.history("forked")) == 5
