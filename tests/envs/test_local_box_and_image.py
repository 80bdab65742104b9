"""The local cluster: an image's steps apply to the venv its workers run with (cached on the next start), and the
hands-on-the-box calls (run, rsync, ssh, status, restart, the CLI) work on this machine."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

import tether
from tests.envs import fns
from tests.envs.conftest import make_wheel


def test_an_image_applies_to_the_local_env_venv_and_is_cached(tether_home, tmp_path, capfd):
    wheel = make_wheel(tmp_path / "dist", "tetherprobe", "4.0", "VALUE = 4\n")
    venv = tmp_path / "imgvenv"
    marker = tmp_path / "marker.txt"
    img = (tether.Image("local-img").set_venv(str(venv)).pip_install([str(wheel)])
           .run_bash(f"echo once >> {marker}").set_env_vars({"LOCAL_IMAGE": "yes"}))
    c = tether.cluster(name="limg", image=img).up_if_not()
    try:
        assert "ran 0:set_venv" in capfd.readouterr().err
        out = tether.function(fns.probe_value).to(c)()
        assert out["value"] == 4 and out["python"].startswith(str(venv))  # the workers run with the image's venv
        assert tether.function(fns.environ).to(c)(["LOCAL_IMAGE"]) == {"LOCAL_IMAGE": "yes"}
        c.restart_server()
        assert "ran none | cached 0:set_venv" in capfd.readouterr().err
        assert marker.read_text() == "once\n"
        with pytest.raises(ImportError):
            import tetherprobe  # type: ignore[import-not-found]  # noqa: F401  # the client's own venv got nothing
    finally:
        c.teardown()


def test_run_rsync_status_and_the_cli_on_the_local_cluster(tether_home, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    c = tether.cluster(name="lbox").up_if_not()
    try:
        [r] = c.run("echo $X; pwd", env={"X": "local"}, stream=False)
        assert r.returncode == 0 and r.stdout == f"local\n{tmp_path / 'home'}\n" and r.host == "localhost"
        assert [x.returncode for x in c.run(["true", "false", "true"], stream=False)] == [0, 1]
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "f.txt").write_text("x\n")
        c.rsync(str(tmp_path / "src"), "copied", contents=True)
        assert (tmp_path / "home" / "copied" / "f.txt").read_text() == "x\n"
        c.rsync("copied/f.txt", str(tmp_path / "back" / "f.txt"), up=False)
        assert (tmp_path / "back" / "f.txt").read_text() == "x\n"
        assert c.ssh(command="exit 5") == 5
        tether.function(fns.environ).to(c, env=tether.env(name="lw"))(["HOME"])
        details = c.status().details()
        [w] = [w for w in details["workers"] if w["env"] == "lw"]
        assert w["rss_bytes"] > 1_000_000 and "cpu_percent" in w
        assert details["nodes"][0]["host"] == "localhost" and details["nodes"][0]["cpus"] >= 1
        out = subprocess.run([sys.executable, "-m", "tether.cli", "cluster", "status", "lbox", "--json"],
                             capture_output=True, text=True, timeout=120)
        assert json.loads(out.stdout)["workers"][0]["env"] == "lw"
        listed = subprocess.run([sys.executable, "-m", "tether.cli", "cluster", "list"], capture_output=True,
                                text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
        assert "lbox" in listed.stdout and "local" in listed.stdout
    finally:
        c.teardown()


def test_an_images_secrets_reach_every_env_and_cluster_up_from_the_cli(tether_home, tmp_path):
    token = "img-" + "secret-value-77"
    img = tether.Image("with-secret").sync_secrets([tether.secret("svc", values={"SVC_TOKEN": token})])
    assert img.spec.steps[0].args == ["svc"] and token not in json.dumps(img.config())
    c = tether.cluster(name="isec", image=img).up_if_not()
    try:
        for env in ("a", "b"):
            seen = tether.function(fns.environ_digests).to(c, env=tether.env(name=env))(["SVC_TOKEN"])
            assert seen == {"SVC_TOKEN": hashlib.sha256(token.encode()).hexdigest()}
        c.stop()
        up = subprocess.run([sys.executable, "-m", "tether.cli", "cluster", "up", "isec"], capture_output=True,
                            text=True, timeout=120)
        assert up.returncode == 0 and "up" in up.stdout and c.status() == "up"
    finally:
        c.teardown()


def test_conda_steps_say_where_conda_cannot_be_had(tether_home, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # a machine without conda
    img = tether.Image("conda").conda_install(["numpy"])
    with pytest.raises(tether.ClusterUnavailable) as info:
        tether.cluster(name="conda", image=img).up_if_not()
    assert info.value.details["step"] == "0:conda_install numpy" and info.value.details["host"] == "localhost"
    assert "conda is not on this host" in info.value.details["stderr"]
    with pytest.raises(tether.ConfigError) as env:
        tether.Image("c").setup_conda_env("env.yml")
    assert "docker image with conda" in (env.value.hint or "")
