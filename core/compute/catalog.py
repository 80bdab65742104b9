"""Instance catalog: what each cloud offers (accelerators, GPU memory, vCPUs, RAM, $/h) per region.

Read through SkyPilot's catalog API when ``sky`` imports; otherwise the same v8 CSVs are read directly
from ``$TETHER_CATALOG_DIR`` or ``~/.sky/catalogs/v8`` (GCP GPUs are priced on their host VM the way
SkyPilot does it, so both readers give the same rows). ``TETHER_CATALOG_READER=csv`` forces the direct reader.
"""

from __future__ import annotations

import ast
import csv
import math
import os
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tether.errors import ConfigError

__all__ = ["CLOUDS", "Offering", "catalog_dir", "offerings", "source"]

#: clouds the catalog covers (lower-case SkyPilot names).
CLOUDS: tuple[str, ...] = ("aws", "gcp", "lambda")

#: nominal per-GPU memory in GiB, used when a catalog row does not state it.
GPU_MEMORY_GIB: dict[str, float] = {
    "A10": 24, "A10G": 24, "A100": 40, "A100-80GB": 80, "A6000": 48, "B200": 180, "GH200": 96, "H100": 80,
    "H100-MEGA": 80, "H200": 141, "K80": 12, "L4": 24, "L40S": 48, "P100": 16, "RTX6000": 24, "T4": 16, "V100": 16,
    "V100-32GB": 32,
}  # fmt: skip

# GCP attaches GPUs to host VMs; these mirror SkyPilot's gcp_catalog host choice (acc -> count -> host types).
_GCP_HOSTS: dict[str, dict[int, list[str]]] = {
    "A100": {1: ["a2-highgpu-1g"], 2: ["a2-highgpu-2g"], 4: ["a2-highgpu-4g"], 8: ["a2-highgpu-8g"],
             16: ["a2-megagpu-16g"]},
    "A100-80GB": {1: ["a2-ultragpu-1g"], 2: ["a2-ultragpu-2g"], 4: ["a2-ultragpu-4g"], 8: ["a2-ultragpu-8g"]},
    "L4": {1: ["g2-standard-4", "g2-standard-8", "g2-standard-12", "g2-standard-16", "g2-standard-32"],
           2: ["g2-standard-24"], 4: ["g2-standard-48"], 8: ["g2-standard-96"]},
    "H100": {1: ["a3-highgpu-1g"], 2: ["a3-highgpu-2g"], 4: ["a3-highgpu-4g"], 8: ["a3-highgpu-8g"]},
    "H100-MEGA": {8: ["a3-megagpu-8g"]},
    "H200": {8: ["a3-ultragpu-8g"]},
    "B200": {8: ["a4-highgpu-8g"]},
}  # fmt: skip
_GCP_ACC_CPUS: dict[str, dict[int, int]] = {
    "K80": {1: 4, 2: 8, 4: 16, 8: 32, 16: 64},
    "V100": {1: 8, 2: 16, 4: 32, 8: 64},
    "T4": {1: 4, 2: 8, 4: 48},
    "P100": {1: 8, 2: 16, 4: 32, 8: 64},
    "DEFAULT": {1: 8, 2: 16, 4: 32, 8: 64, 16: 128},
}
_GCP_DEFAULT_HOST_FAMILY = ("n1-standard", "n1-highmem", "n1-highcpu")
#: GCP families that exist only as GPU hosts; their rows are not CPU offerings.
_GCP_GPU_ONLY_FAMILIES = ("a2-", "a3-", "a4-", "g2-", "g4-")


class Offering(BaseModel):
    """One instance type in one region of one cloud, with its on-demand and spot price per hour."""

    model_config = ConfigDict(defer_build=True)  # built at first use, not import

    cloud: str = Field(description="lower-case cloud name: aws, gcp, lambda")
    region: str
    instance_type: str
    accelerator: str | None = Field(None, description="GPU name, None for CPU-only types")
    accelerator_count: int = 0
    gpu_memory_gib: float | None = Field(None, description="memory of one GPU")
    vcpus: float | None = None
    memory_gib: float | None = None
    price: float | None = Field(None, description="on-demand $/h")
    spot_price: float | None = Field(None, description="spot $/h, None when the cloud has no spot offer")

    def hourly(self, use_spot: bool = False) -> float | None:
        """The price this offering costs per hour, spot or on-demand."""
        return self.spot_price if use_spot else self.price


def catalog_dir() -> Path:
    """Where the direct CSV reader looks: ``$TETHER_CATALOG_DIR`` or ``~/.sky/catalogs/v8``."""
    env = os.environ.get("TETHER_CATALOG_DIR")
    return Path(env) if env else Path.home() / ".sky" / "catalogs" / "v8"


def source() -> str:
    """``"skypilot"`` when the catalog is read through SkyPilot, else ``"csv"``."""
    if os.environ.get("TETHER_CATALOG_READER") == "csv":
        return "csv"
    try:
        import sky.catalog  # noqa: F401
    except Exception:  # noqa: BLE001 - sky is optional; any import failure means the CSV reader
        return "csv"
    return "skypilot"


def offerings(
    *,
    accelerator: str | None = None,
    clouds: Iterable[str] | None = None,
    regions: Iterable[str] | None = None,
    use_spot: bool = False,
) -> list[Offering]:
    """Every offering matching the accelerator (``"CPU"`` or ``""`` for CPU-only), clouds and regions.

    With ``use_spot`` only offerings that have a spot price are returned. Rows without a price are left out.
    """
    wanted = tuple(sorted({c.lower() for c in clouds})) if clouds is not None else CLOUDS
    unknown = [c for c in wanted if c not in CLOUDS]
    if unknown:
        raise ConfigError(f"no catalog for cloud(s) {unknown}", hint=f"known clouds: {list(CLOUDS)}")
    rows = _all_offerings(source(), wanted, str(catalog_dir()))
    region_set = {r.lower() for r in regions} if regions is not None else None
    out = []
    for o in rows:
        if accelerator is not None:
            if accelerator.upper() in ("", "CPU"):
                if o.accelerator is not None:
                    continue
            elif (o.accelerator or "").lower() != accelerator.lower():
                continue
        if region_set is not None and o.region.lower() not in region_set:
            continue
        if o.hourly(use_spot) is None:
            continue
        out.append(o)
    return out


@lru_cache(maxsize=8)
def _all_offerings(reader: str, clouds: tuple[str, ...], directory: str) -> tuple[Offering, ...]:
    best: dict[tuple[Any, ...], Offering] = {}
    for cloud in clouds:
        for o in _sky_rows(cloud) if reader == "skypilot" else _csv_rows(cloud, Path(directory)):
            # one row per (type, region): the cheapest zone, as SkyPilot lists it
            key = (*_key(o), o.accelerator_count)
            seen = best.get(key)
            if seen is None:
                best[key] = o
            else:
                seen.price = _min(seen.price, o.price)
                seen.spot_price = _min(seen.spot_price, o.spot_price)
    return tuple(sorted(best.values(), key=_key))


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _key(o: Offering) -> tuple[Any, ...]:
    return (o.cloud, o.region, o.instance_type, o.accelerator or "")


# --- SkyPilot reader -------------------------------------------------------------------------------------


def _sky_rows(cloud: str) -> Iterator[Offering]:
    import sky.catalog
    from sky.catalog import common

    accs = sky.catalog.list_accelerators(gpus_only=True, clouds=cloud, all_regions=True, require_price=True)
    for name, infos in accs.items():
        for info in infos:
            if info.instance_type is None:
                continue
            yield _offering(
                cloud, info.region, info.instance_type, name, info.accelerator_count,
                _gpu_mem(name, info.device_memory), info.cpu_count, info.memory, info.price, info.spot_price,
            )  # fmt: skip
    # CPU-only types are not in list_accelerators; read them through SkyPilot's catalog loader.
    df = common.read_catalog(f"{cloud}/vms.csv")
    cpu = df[df["AcceleratorName"].isna() & df["InstanceType"].notna()]
    for rec in cpu.to_dict("records"):
        yield from _cpu_row(cloud, rec)


# --- direct CSV reader -----------------------------------------------------------------------------------


def _csv_rows(cloud: str, directory: Path) -> Iterator[Offering]:
    path = directory / cloud / "vms.csv"
    if not path.exists():
        raise ConfigError(
            f"catalog file {path} not found",
            hint="install tether[sky], or copy SkyPilot's v8 catalog there (or set TETHER_CATALOG_DIR)",
        )
    with path.open(newline="") as f:
        recs: list[dict[str, Any]] = [{k: (v or None) for k, v in r.items()} for r in csv.DictReader(f)]
    if cloud == "gcp":
        yield from _gcp_rows(recs)
        return
    for rec in recs:
        if rec["InstanceType"] is None:
            continue
        if rec["AcceleratorName"] is None:
            yield from _cpu_row(cloud, rec)
            continue
        if _num(rec["Price"]) is None:
            continue
        name = rec["AcceleratorName"]
        yield _offering(
            cloud, rec["Region"], rec["InstanceType"], name, _num(rec["AcceleratorCount"]),
            _gpu_mem(name, _gpuinfo_gib(rec.get("GpuInfo"))), _num(rec["vCPUs"]), _num(rec["MemoryGiB"]),
            _num(rec["Price"]), _num(rec.get("SpotPrice")),
        )  # fmt: skip


def _gcp_rows(recs: list[dict[str, Any]]) -> Iterator[Offering]:
    hosts = [r for r in recs if r["InstanceType"] is not None]
    for rec in recs:
        if rec["InstanceType"] is not None:
            if rec["AcceleratorName"] is None:
                yield from _cpu_row("gcp", rec)
            continue
        name, count = rec["AcceleratorName"], int(_num(rec["AcceleratorCount"]) or 0)
        if (
            name is None
            or name.startswith("tpu-")
            or rec.get("GpuInfo") is None
            or _num(rec["Price"]) is None
        ):
            continue
        host = _gcp_host(hosts, name, count, rec["Region"], rec["AvailabilityZone"])
        if host is None:
            continue
        spot = _num(rec.get("SpotPrice"))
        host_spot = _num(host.get("SpotPrice"))
        yield _offering(
            "gcp", rec["Region"], host["InstanceType"], name, count,
            _gpu_mem(name, _gpuinfo_gib(rec.get("GpuInfo"))), _num(host["vCPUs"]), _num(host["MemoryGiB"]),
            (_num(rec["Price"]) or 0) + (_num(host["Price"]) or 0),
            spot + host_spot if spot is not None and host_spot is not None else None,
        )  # fmt: skip


def _gcp_host(
    hosts: list[dict[str, Any]], acc: str, count: int, region: str, zone: str
) -> dict[str, Any] | None:
    pool = [h for h in hosts if h["Region"] == region and h["AvailabilityZone"] == zone and _num(h["Price"])]
    if acc in _GCP_HOSTS:
        allowed = _GCP_HOSTS[acc].get(count, [])
        pool = [h for h in pool if h["InstanceType"] in allowed]
    else:
        cpus = _GCP_ACC_CPUS.get(acc, _GCP_ACC_CPUS["DEFAULT"]).get(count)
        if cpus is None:
            return None
        pool = [
            h for h in pool
            if h["InstanceType"].startswith(_GCP_DEFAULT_HOST_FAMILY)
            and (_num(h["vCPUs"]) or 0) >= cpus and (_num(h["MemoryGiB"]) or 0) >= 4 * cpus
        ]  # fmt: skip
    return min(pool, key=lambda h: _num(h["Price"]) or math.inf) if pool else None


# --- shared row helpers ----------------------------------------------------------------------------------


def _cpu_row(cloud: str, rec: dict[str, Any]) -> Iterator[Offering]:
    price = _num(rec.get("Price"))
    if price is None or (cloud == "gcp" and rec["InstanceType"].startswith(_GCP_GPU_ONLY_FAMILIES)):
        return
    yield _offering(
        cloud, rec["Region"], rec["InstanceType"], None, 0, None, _num(rec.get("vCPUs")),
        _num(rec.get("MemoryGiB")), price, _num(rec.get("SpotPrice")),
    )  # fmt: skip


def _offering(
    cloud: str, region: str, instance_type: str, acc: str | None, count: Any, gpu_mem: float | None,
    vcpus: Any, memory: Any, price: Any, spot: Any,
) -> Offering:  # fmt: skip
    return Offering(
        cloud=cloud, region=region, instance_type=instance_type, accelerator=acc,
        accelerator_count=int(_num(count) or 0), gpu_memory_gib=gpu_mem, vcpus=_num(vcpus), memory_gib=_num(memory),
        price=_round(_num(price)), spot_price=_round(_num(spot)),
    )  # fmt: skip


def _gpu_mem(name: str, stated: float | None) -> float | None:
    return GPU_MEMORY_GIB.get(name, stated if stated and not math.isnan(stated) else None)


def _gpuinfo_gib(info: str | None) -> float | None:
    """Per-GPU memory from a catalog ``GpuInfo`` cell (a Python-literal dict), in GiB."""
    if not info:
        return None
    try:
        data = ast.literal_eval(info)
        return float(data["Gpus"][0]["MemoryInfo"]["SizeInMiB"]) / 1024
    except (ValueError, SyntaxError, KeyError, IndexError, TypeError):
        return None


def _num(value: Any) -> float | None:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
