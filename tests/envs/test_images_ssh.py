"""``tether.Image`` on real SSH hosts in network namespaces: steps run once per host, are cached on the next up,
reach the daemon's workers; a failing step names the step, the host and its stderr."""

from __future__ import annotations

import pytest

import tether
from tests.envs import fns
from tests.envs.conftest import make_wheel
from tether.compute.bootstrap import SSHTarget
from tether.compute.setup import setup_script

pytestmark = pytest.mark.netns


@pytest.mark.timeout(400)  # two hosts bootstrapped and brought up more than once
def test_image_steps_run_once_per_host_and_are_cached_on_the_next_up(netns_hosts, pinned_wheel, tether_home,
                                                                       tmp_path, capfd):
    hosts = netns_hosts
    wheel = make_wheel(tmp_path / "dist", "tetherprobe", "2.0", "VALUE = 7\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("payload\n")
    img = (tether.Image("lab-image").pip_install([str(wheel)]).run_bash("echo built > ~/built.txt")
           .set_env_vars({"IMAGE_VAR": "from-image"}).rsync(str(data), "datasets", contents=True))
    c = tether.cluster(name="imaged", host=hosts.addresses, ssh_creds=hosts.ssh_creds, image=img).up_if_not()
    try:
        first = capfd.readouterr().err
        for addr in hosts.addresses:
            assert f"image 'lab-image' on {addr}: ran 0:pip_install" in first and "| cached none" in first
            t = SSHTarget.from_creds(addr, hosts.ssh_creds, tmp_path / "kh")
            assert t.run("cat ~/built.txt ~/datasets/input.txt", step="test") == "built\npayload\n"
        out = tether.function(fns.probe_value).to(c)()
        assert out["value"] == 7  # installed into the daemon's venv: the default env has it
        assert tether.function(fns.environ).to(c)(["IMAGE_VAR"]) == {"IMAGE_VAR": "from-image"}

        c.stop()  # the next up bootstraps again: every step is cached
        again = tether.cluster(name="imaged", host=hosts.addresses, ssh_creds=hosts.ssh_creds, image=img)
        again.up_if_not()
        second = capfd.readouterr().err
        for addr in hosts.addresses:
            assert f"image 'lab-image' on {addr}: ran none | cached 0:pip_install" in second
        assert tether.function(fns.environ).to(again)(["IMAGE_VAR"]) == {"IMAGE_VAR": "from-image"}

        img.set_env_vars({"IMAGE_VAR": "changed"})  # a new last step: only it runs, the daemon restarts
        third = tether.cluster(name="imaged", host=hosts.addresses, ssh_creds=hosts.ssh_creds, image=img)
        third.up_if_not()
        log = capfd.readouterr().err
        assert "ran 4:set_env_vars IMAGE_VAR | cached 0:pip_install" in log
        assert tether.function(fns.environ).to(third)(["IMAGE_VAR"]) == {"IMAGE_VAR": "changed"}
    finally:
        c.teardown()


def test_a_failing_step_names_the_step_the_host_and_its_stderr(netns_hosts, pinned_wheel, tether_home):
    hosts = netns_hosts
    img = tether.Image("broken").run_bash("echo fine").run_bash("echo 'no such package: frobnicate' >&2; exit 3")
    c = tether.cluster(name="broken", host=hosts.addresses[1:], ssh_creds=hosts.ssh_creds, image=img)
    with pytest.raises(tether.ClusterUnavailable) as info:
        c.up_if_not()
    err = info.value
    assert err.details["step"].startswith("1:run_bash") and err.details["host"] == hosts.addresses[1]
    assert "no such package: frobnicate" in err.details["stderr"] and hosts.addresses[1] in str(err)
    with pytest.raises(tether.ConfigError) as docker:
        tether.cluster(name="dock", host=hosts.addresses[1:], ssh_creds=hosts.ssh_creds,
                       image=tether.Image("d").from_docker("nvcr.io/nvidia/pytorch:24.01-py3")).up_if_not()
    assert "sky cluster" in str(docker.value)
    c.teardown()


@pytest.mark.timeout(400)  # two hosts bootstrapped and brought up more than once
def test_the_launch_setup_script_runs_each_step_once_on_a_real_host(netns_hosts, pinned_wheel, tether_home,
                                                                    tmp_path):
    """What a sky launch runs in its setup, run here on a netns host with tether's venv: steps run, then a rerun
    (a relaunch of the same image) skips them all; a venv made by set_venv sees tether."""
    hosts = netns_hosts
    c = tether.cluster(name="scripted", host=hosts.addresses[:1], ssh_creds=hosts.ssh_creds).up_if_not()
    try:
        wheel = make_wheel(tmp_path / "dist", "tetherprobe", "3.0", "VALUE = 3\n")
        img = (tether.Image("s").set_venv("imgvenv").pip_install([str(wheel)]).run_bash("echo ran >> ~/runs.txt")
               .set_env_vars({"A": "b c"}))
        rdir = f"{hosts.hosts[0].home / 'home'}/.tether/daemon"
        script = setup_script(img.spec, daemon_dir=rdir, python=f"{rdir}/venv/bin/python")
        t = SSHTarget.from_creds(hosts.addresses[0], hosts.ssh_creds, tmp_path / "kh")
        first = t.run("sh -s", step="setup", stdin=script)
        assert first.count("tether image step") == 3
        assert t.run("sh -s", step="setup", stdin=script).count("tether image step") == 0
        assert t.run("cat ~/runs.txt", step="test") == "ran\n"
        probe = t.run(f"$(cat {rdir}/image.venv) -c 'import tetherprobe, tether; print(tetherprobe.VALUE)'",
                      step="test")
        assert probe.strip() == "3"
        assert t.run(f". {rdir}/image.env; echo \"$A\"", step="test") == "b c\n"
    finally:
        c.teardown()
