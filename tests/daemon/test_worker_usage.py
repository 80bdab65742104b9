"""``/status`` says what each worker uses (resident memory, CPU share since the previous status request), so the
console and ``tether cluster status`` can show it for any cluster the caller reaches, not only this machine's."""

from __future__ import annotations

from tests.reliability.daemons import start_daemon


def _worker(d, env: str) -> dict:
    (w,) = [w for w in d.get("/status").json()["workers"] if w["env"] == env]
    return w


def test_status_reports_each_workers_memory_and_cpu(tmp_path):
    d = start_daemon(tmp_path / "state")
    try:
        d.deploy("burn", "burn", env="busy", module="tests.daemon.usage_services")
        d.deploy("hold", "hold", env="fat", module="tests.daemon.usage_services")
        assert d.post("/hold/call", json={"args": [200]}).status_code == 200
        _worker(d, "busy"), _worker(d, "fat")  # a first sample of each
        assert d.post("/burn/call", json={"args": [1.0]}).status_code == 200  # a second of CPU, in "busy" only
        busy, fat = _worker(d, "busy"), _worker(d, "fat")
        assert fat["rss_bytes"] > 200 * 1024 * 1024 > busy["rss_bytes"] > 0
        assert busy["cpu_percent"] > fat["cpu_percent"] >= 0
    finally:
        d.kill()
