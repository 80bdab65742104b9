"""A ``tether.Image`` on a sky cluster, at SkyPilot's boundary: its docker image is the task's ``image_id``, its
steps run in the task's setup after tether's install, its rsync steps are file mounts, its env vars reach the
daemon (and so the workers)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.sky

from tether import routing  # noqa: E402
from tether.api.images import Image  # noqa: E402
from tether.compute.sky import build_task, daemon_command  # noqa: E402
from tether.specs import ClusterSpec  # noqa: E402


def test_an_images_docker_steps_mounts_and_env_reach_the_skypilot_task(sky_home, tmp_path: Path, monkeypatch):
    wheel = tmp_path / "tether-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    data = tmp_path / "data"
    data.mkdir()
    img = (Image("gpu").from_docker("nvcr.io/nvidia/pytorch:24.01-py3").pip_install(["transformers==4.40.0"])
           .run_bash("nvidia-smi -L").set_env_vars({"HF_HUB_OFFLINE": "1"}).rsync(str(data), "datasets"))
    spec = ClusterSpec(name="a10", instance_type="A10G:1", image=img)
    task = build_task(spec, routing.plan(spec).candidates[0], wheel=wheel, token=None)
    (res,) = list(task.resources)
    assert "docker:nvcr.io/nvidia/pytorch:24.01-py3" in str(res.image_id)  # SkyPilot keeps it per region
    setup = task.setup
    install = setup.index("pip install -q --python")  # tether's own install comes first
    assert setup.index("transformers==4.40.0") > install and "nvidia-smi -L" in setup
    assert "export HF_HUB_OFFLINE=1" in setup
    assert task.file_mounts["~/datasets/data"] == str(data)
    assert ". ./image.env" in daemon_command(spec, token=False)
