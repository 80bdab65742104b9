"""The catalog read straight from the real trimmed v8 CSVs (the reader used when SkyPilot is not installed)."""

from __future__ import annotations

import pytest

from tether import catalog
from tether.errors import ConfigError


def _find(rows: list[catalog.Offering], cloud: str, region: str, itype: str) -> catalog.Offering:
    (hit,) = [o for o in rows if (o.cloud, o.region, o.instance_type) == (cloud, region, itype)]
    return hit


def test_aws_a10g_rows_carry_the_fixture_prices_and_gpu_memory(catalog_dir):
    rows = catalog.offerings(accelerator="A10G")
    assert {o.cloud for o in rows} == {"aws"}
    x = _find(rows, "aws", "us-east-1", "g5.xlarge")
    assert (x.accelerator_count, x.vcpus, x.memory_gib, x.price, x.gpu_memory_gib) == (
        1,
        4.0,
        16.0,
        1.006,
        24,
    )
    assert x.spot_price == pytest.approx(_find(rows, "aws", "us-east-1", "g5.xlarge").spot_price)
    assert _find(rows, "aws", "us-east-1", "g5.12xlarge").accelerator_count == 4


def test_gcp_gpu_is_priced_on_its_host_vm_like_skypilot(catalog_dir):
    a100 = _find(catalog.offerings(accelerator="A100", clouds=["gcp"]), "gcp", "us-central1", "a2-highgpu-1g")
    assert a100.price == pytest.approx(0.73948 + 2.93391)  # host VM row + GPU row of the fixture
    assert a100.spot_price == pytest.approx(0.36975 + 1.4341)
    t4 = catalog.offerings(accelerator="T4", clouds=["gcp"], regions=["us-central1"])
    one = [o for o in t4 if o.accelerator_count == 1]
    assert [o.instance_type for o in one] == ["n1-highmem-4"]
    assert one[0].gpu_memory_gib == 16


def test_cpu_offerings_leave_out_gpu_only_host_families(catalog_dir):
    cpu = catalog.offerings(accelerator="CPU")
    types = {o.instance_type for o in cpu}
    assert {"m6i.2xlarge", "n2-standard-8", "cpu_4x_general"} <= types
    assert not any(t.startswith(("a2-", "a3-", "g2-")) for t in types)
    assert all(o.accelerator is None for o in cpu)


def test_spot_filter_drops_clouds_without_spot_prices(catalog_dir):
    on_demand = catalog.offerings(accelerator="A100")
    spot = catalog.offerings(accelerator="A100", use_spot=True)
    assert "lambda" in {o.cloud for o in on_demand}
    assert "lambda" not in {o.cloud for o in spot}
    assert all(o.spot_price is not None for o in spot)


def test_region_and_cloud_filters(catalog_dir):
    rows = catalog.offerings(accelerator="L4", clouds=["gcp", "aws"], regions=["us-east4"])
    assert rows and {(o.cloud, o.region) for o in rows} == {("gcp", "us-east4")}


def test_unknown_cloud_and_missing_catalog_are_config_errors(catalog_dir, tmp_path, monkeypatch):
    with pytest.raises(ConfigError):
        catalog.offerings(clouds=["azure"])
    monkeypatch.setenv("TETHER_CATALOG_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="not found") as info:
        catalog.offerings(clouds=["aws"])
    assert "TETHER_CATALOG_DIR" in (info.value.hint or "")
