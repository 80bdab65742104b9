"""State on disk: every write of the daemon's stored state (objects, the manifest, the call journal) is atomic, and
a full disk answers a typed ``StorageFull`` (JSON, 507) with the previous copy intact — also after a restart.

The disk fills for real: the daemon's state dir is a small tmpfs mounted in a private mount namespace (root and
``unshare(1)``); the daemon and its worker run inside it, the test reads their answers from a script's output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import cloudpickle, requests
    from tests.reliability.daemons import start_daemon

    state = Path(sys.argv[1])
    out = {}
    d = start_daemon(state)
    pickle = {**d.headers, "Content-Type": "application/x-tether-pickle"}

    def put(key, value):
        return requests.put(d.endpoint + "/objects/" + key, data=cloudpickle.dumps(value), headers=pickle, timeout=30)

    def get(key):
        r = d.get("/objects/" + key)
        return cloudpickle.loads(r.content) if r.status_code == 200 else r.json()

    old = b"o" * (1024 * 1024)
    out["put_small"] = put("blob", old).status_code
    d.deploy("add", "add")
    fd = os.open(state / "filler", os.O_WRONLY | os.O_CREAT)  # fill the disk to the last block
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        os.close(fd)
    r = put("blob", b"n" * (1536 * 1024))  # overwrite: truncating the old copy first would make room for 1 MiB
    out["overwrite"] = [r.status_code, r.json()]
    out["after_overwrite"] = get("blob") == old
    out["leftovers"] = sorted(p.name for p in state.rglob("*") if p.name.startswith("."))

    spec = {"name": "echo", "env": {"name": "default"},
            "code": {"root": os.getcwd(), "import_path": "tests.core.services", "qualname": "echo"}}
    r = d.post("/deploy", json=spec)
    out["deploy_full"] = [r.status_code, r.json()]
    out["manifest_services"] = sorted(json.loads((state / "manifest.json").read_text())["services"])
    out["keys_after_deploy_full"] = sorted(d.get("/objects").json()["keys"])
    r = d.call("add", 2, 3)  # calls still run on a full disk (the call journal cannot grow meanwhile)
    out["call_full"] = [r.status_code, r.json().get("result")]
    r = put("other", b"z" * 300_000)
    out["put_new_full"] = [r.status_code, r.json()["error"]["type"] if r.status_code != 200 else None]
    out["other_listed"] = "other" in d.get("/objects").json()["keys"]
    out["leftovers_full"] = sorted(p.name for p in state.rglob("*") if p.name.startswith("."))

    d.kill(signal.SIGKILL)
    (state / "filler").unlink()
    d = start_daemon(state)
    out["after_restart"] = get("blob") == old
    out["restart_keys"] = sorted(d.get("/objects").json()["keys"])
    out["restart_call"] = d.call("add", 4, 5).json().get("result")
    d.kill()
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare(1)")
def test_a_full_disk_answers_storage_full_and_keeps_the_previous_copy(tmp_path):
    script, state = tmp_path / "full_disk.py", tmp_path / "state"
    script.write_text(SCRIPT)
    state.mkdir()
    mount = f"mount -t tmpfs -o size=8m tmpfs {state} && exec {sys.executable} {script} {state}"
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", mount],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = json.loads(lines[-1][len("RESULT "):])

    assert out["put_small"] == 200
    status, body = out["overwrite"]
    assert status == 507 and body["error"]["type"] == "StorageFull", body
    assert body["error"]["details"]["key"] == "blob" and "blob" in body["error"]["message"]
    assert out["after_overwrite"], "the previous copy was damaged by the failed overwrite"
    assert out["leftovers"] == [], "a failed write left a temporary file behind"

    status, body = out["deploy_full"]
    assert status == 507 and body["error"]["type"] == "StorageFull", body
    assert out["manifest_services"] == ["add"]  # the manifest on disk is the previous one, whole
    assert out["keys_after_deploy_full"] == ["add", "blob"]  # and so is the daemon's view of it
    assert out["call_full"] == [200, 5]
    assert out["put_new_full"] == [507, "StorageFull"] and not out["other_listed"]
    assert out["leftovers_full"] == []

    assert out["after_restart"], "the previous copy is gone after a restart"
    assert out["restart_keys"] == ["add", "blob"]
    assert out["restart_call"] == 9
