"""``examples/prefect_flow.py`` runs end to end on the embedded local cluster and a Prefect test server."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.services.embed import embed


def test_prefect_example_embeds_its_documents_remotely(
    prefect_server: None, tether_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from examples import prefect_flow

    vectors = prefect_flow.main()

    assert vectors == [embed(text) for text in prefect_flow.DOCS]
    assert "prefect example OK" in capsys.readouterr().out
    assert not list((tether_home / "clusters").glob("examples/ready.json"))  # the cluster it started is gone
