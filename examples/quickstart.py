"""Quickstart: a function and a stateful class as services on the embedded local cluster (no cloud account).

Run: python examples/quickstart.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tether  # noqa: E402
from examples.services.counter import Counter  # noqa: E402
from examples.services.embed import embed  # noqa: E402


def main() -> None:
    c = tether.cluster(name="quickstart").up_if_not()  # a daemon subprocess on 127.0.0.1
    print(f"cluster up at {c.endpoint}")

    remote_embed = tether.function(embed).to(c)  # deployed by import path; code synced as files
    vec = remote_embed("research code is production code")  # remote print/logging stream back here
    print("embedding:", [round(v, 3) for v in vec])

    RCounter = tether.module(Counter).to(c, env=tether.env(name="counter", env_vars={"STEP": "2"}))
    ctr = RCounter(start=5, name="ctr")  # a named, stateful remote instance
    print("counter:", ctr.incr(), ctr.incr(), "remote attribute n =", ctr.remote.n)

    handle = remote_embed.spawn("a call you can re-attach to")
    print(f"spawned call {handle.call_id}; result has {len(handle.result(timeout=30))} dims")

    print("services on the cluster:", c.keys())
    c.teardown()
    print("torn down; quickstart OK")


if __name__ == "__main__":
    main()
