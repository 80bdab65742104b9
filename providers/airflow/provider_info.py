"""Airflow provider registration (entry point ``apache_airflow_provider``): hook, connection type, modules.

Kept free of Airflow and tether imports: the ProvidersManager calls it while Airflow itself is starting.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

INTEGRATION = "tether"
HOOK_CLASS = "tether.providers.airflow.hook.TetherHook"


def _version() -> str:
    try:
        return version("tether")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """The provider description Airflow validates against ``provider_info.schema.json``."""
    modules = "tether.providers.airflow"
    return {
        "package-name": "tether",
        "name": "tether",
        "description": "Call tether services (functions and classes on compute you own) from Airflow tasks.",
        "versions": [_version()],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://github.com/tether/tether",
                "tags": ["software"],
            }
        ],
        "operators": [{"integration-name": INTEGRATION, "python-modules": [f"{modules}.operators"]}],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": [f"{modules}.hook"]}],
        "triggers": [{"integration-name": INTEGRATION, "python-modules": [f"{modules}.triggers"]}],
        "task-decorators": [{"name": "tether", "class-name": f"{modules}.decorators.tether_task"}],
        "extra-links": [f"{modules}.links.TetherCallLink"],
        "connection-types": [
            {
                "connection-type": "tether",
                "hook-class-name": HOOK_CLASS,
                "hook-name": "Tether",
                "conn-fields": {
                    "cluster": {
                        "label": "Cluster",
                        "schema": {"type": ["string", "object", "null"]},
                        "description": "a saved cluster's name, a ClusterSpec as JSON, or "
                        '{"name": ..., "endpoint": "https://host:32300"} for a daemon run elsewhere '
                        "(default: the embedded local cluster)",
                    },
                    "cluster_token": {
                        "label": "Cluster token",
                        "schema": {"type": ["string", "null"], "format": "password"},
                        "description": "bearer token of the daemon at the cluster endpoint (default: Token)",
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login"],
                    "relabeling": {"host": "Registry address", "password": "Token"},
                    "placeholders": {
                        "host": "https://tether-registry.internal:8080 (empty: local registry)",
                        "password": "team or cluster token",
                        "extra": '{"cluster": {"name": "a10", "instance_type": "A10G:1"}}',
                    },
                },
            }
        ],
    }
