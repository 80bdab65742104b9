"""Training with out-of-memory escalation, on the local ladder (no cloud, no GPU needed).

    python examples/oom_ladder.py

The "model" holds ``hidden_mib`` of weights and activations. It starts on ``local:256MB`` (a daemon whose
workers run under a real 256 MB memory limit), runs out of memory there, and tether reruns it on
``local:1GB`` — the same code, unchanged, as it would move from an A10G to an L40S. Swap the ladder for
``["A10G:1", "L40S:1", "A100-80GB:1", "H100:1"]`` or ``tether.Escalation.by_memory(start="T4:1")`` to do
the same on a cloud.
"""

from __future__ import annotations

import time
import warnings

import tether

# train() lives in this script, so tether ships it by value; in a package it would deploy by import path.
warnings.filterwarnings("ignore", message=".*defined in __main__")


def train(epochs: int = 3, hidden_mib: int = 600) -> dict[str, float]:
    """A stand-in training loop: allocate the model's memory, then 'train' for a few epochs."""
    print(f"allocating {hidden_mib} MiB of parameters and activations", flush=True)
    weights = bytearray(b"\x01") * (hidden_mib * 2**20)  # touched pages: really resident
    loss = 1.0
    for epoch in range(1, epochs + 1):
        weights[epoch * 4096] = epoch % 256
        loss *= 0.6
        print(f"epoch {epoch}/{epochs} loss={loss:.3f}", flush=True)
        time.sleep(0.1)
    return {"loss": loss, "resident_mib": len(weights) / 2**20}


def main() -> None:
    policy = tether.Escalation(ladder=["local:256MB", "local:1GB", "local:4GB"], max_attempts=3)
    small = tether.cluster(name="oom-ladder", instance_type="local:256MB").up_if_not()
    attempts: list[tether.escalation.Attempt] = []
    remote_train = tether.function(train).to(small, on_oom=policy).with_options(on_attempt=attempts.append)
    try:
        result = remote_train(epochs=3, hidden_mib=600)
        print(f"\nresult: {result}")
        print("attempts:")
        for a in attempts:
            cost = "n/a" if a.est_cost is None else f"${a.est_cost:.4f}"
            print(f"  {a.instance_type:<12} {a.outcome:<4} {a.seconds:6.2f}s  est. {cost}"
                  + (f"  ({a.error_type}: {a.details.get('reasons', [a.error])[0]})" if a.error else ""))  # fmt: skip
        now = remote_train.current_cluster
        print(f"now running on: {now.name} ({now.spec.instance_type}); "
              f"{small.name} is {small.status()}")  # fmt: skip
    finally:
        (remote_train.current_cluster or small).teardown()
        small.teardown()


if __name__ == "__main__":
    main()
