"""Airflow provider registration (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "tether",
        "name": "tether",
        "description": "Call tether services from Airflow tasks.",
        "versions": ["0.1.0"],
    }
