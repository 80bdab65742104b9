"""Functions the distributed tests run on the namespace hosts (in .venv-dist's python)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def where(x: int) -> dict[str, Any]:
    """Square ``x`` and say where it ran: each test host has its own HOME; each replica its own process."""
    return {"x": x, "square": x * x, "home": os.environ.get("HOME"), "pid": os.getpid(),
            "env": os.environ.get("TETHER_ENV")}


def slow_square(x: int, seconds: float = 0.0) -> int:
    time.sleep(seconds)
    return x * x


def die_once(x: int, marker: str) -> int:
    """The first call to find no marker file makes it and kills its own worker (a crash mid-call)."""
    if x < 0 and not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os._exit(9)
    time.sleep(0.2)
    return x


def sleep_then_mark(x: int, folder: str, seconds: float) -> int:
    """Mark the start, sleep (a cancelled call never writes its end mark)."""
    Path(folder, f"start-{x}-{os.getpid()}").touch()
    time.sleep(seconds)
    Path(folder, f"end-{x}").touch()
    return x


def contract() -> dict[str, str]:
    keys = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")
    return {k: os.environ.get(k, "") for k in keys} | {"home": os.environ.get("HOME", ""),
                                                      "pid": str(os.getpid())}


def allreduce_and_ddp_step() -> dict[str, Any]:
    """torch.distributed over gloo: an all-reduce of the ranks, then one DDP step of a tiny model."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        t = torch.tensor([float(rank + 1)])
        dist.all_reduce(t)
        torch.manual_seed(0)
        model = DDP(torch.nn.Linear(4, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        torch.manual_seed(rank)  # every rank its own data: DDP averages the gradients
        loss = model(torch.randn(8, 4)).pow(2).mean()
        loss.backward()
        opt.step()
        print(f"rank {rank} of {world}: all_reduce={t.item():g}")
        weights = [p.detach().clone() for p in model.parameters()]
        return {"rank": rank, "world": world, "sum": t.item(), "weights": [w.tolist() for w in weights],
                "local_rank": int(os.environ["LOCAL_RANK"]), "home": os.environ.get("HOME")}
    finally:
        dist.destroy_process_group()


class RankFailed(ValueError):
    pass


def fail_on_rank(bad: int, folder: str) -> int:
    """Rank ``bad`` raises; the others block in a barrier that can never complete."""
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    Path(folder, f"rank-{rank}-{os.getpid()}").touch()
    if rank == bad:
        deadline = time.monotonic() + 120  # fail once every other rank is running (and about to block)
        while len(list(Path(folder).glob("rank-*"))) < int(os.environ["WORLD_SIZE"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        raise RankFailed(f"rank {rank} refuses")
    dist.init_process_group("gloo")
    dist.barrier()  # never returns: rank `bad` never joins
    return rank


def find_minimum(num_samples: int = 4) -> dict[str, Any]:
    """The seeds' Ray Tune example: a search over a space, reusing actors, on the cluster tether started."""
    import ray
    from ray import tune

    ray.init(address="auto", log_to_driver=False)
    try:
        def objective(config: dict[str, float]) -> dict[str, float]:
            return {"score": (config["x"] - 3) ** 2 + config["y"]}

        tuner = tune.Tuner(objective, param_space={"x": tune.grid_search([1, 2, 3, 4][:num_samples]),
                                                   "y": tune.uniform(0, 0.01)},
                           tune_config=tune.TuneConfig(metric="score", mode="min", reuse_actors=True))
        best = tuner.fit().get_best_result()
        nodes = [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]]
        return {"best_x": best.config["x"], "nodes": sorted(nodes)}
    finally:
        ray.shutdown()


def dask_sum(client: Any, n: int) -> dict[str, Any]:
    futures = client.map(lambda i: i * i, range(n))
    total = client.submit(sum, futures).result()
    workers = sorted(client.scheduler_info()["workers"])
    return {"total": total, "workers": workers}


def pid_after(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def visible_gpus(_: int) -> tuple[str, str | None, int]:
    return os.environ.get("HOME", ""), os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid()


def gpus_seen(*_: Any) -> str | None:
    """The GPUs this worker was given (``CUDA_VISIBLE_DEVICES``)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def rank_allocates(mib_by_rank: dict[int, int]) -> dict[str, int]:
    """Each rank allocates and touches its share of memory (``mib_by_rank[RANK]`` MiB); its rank and pid."""
    rank = int(os.environ["RANK"])
    data = b"\x01" * (mib_by_rank.get(rank, 1) * 2**20)
    return {"rank": rank, "mib": len(data) // 2**20, "pid": os.getpid()}


class Tally:
    """A live object with state, to show where an instance runs."""

    def __init__(self, start: int = 0) -> None:
        self.n = start

    def add(self, k: int = 1) -> int:
        self.n += k
        return self.n

    def home(self) -> str | None:
        return os.environ.get("HOME")


def ray_resources() -> dict[str, Any]:
    """What each node of the Ray cluster offers (CPU, GPU), as Ray itself sees it."""
    import ray

    ray.init(address="auto", log_to_driver=False)
    try:
        return {n["NodeManagerAddress"]: {k: v for k, v in n["Resources"].items() if k in ("CPU", "GPU")}
                for n in ray.nodes() if n["Alive"]}
    finally:
        ray.shutdown()


def dask_resources(client: Any) -> dict[str, Any]:
    """Each Dask worker's threads, memory limit and resources, as the scheduler sees them."""
    return {w["host"]: {"nthreads": w["nthreads"], "memory_limit": w["memory_limit"],
                        "resources": w.get("resources", {})} for w in client.scheduler_info()["workers"].values()}
