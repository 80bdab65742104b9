"""Registry records as pydantic models: saved versions, call records, usage rows, access grants."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from tether.registry.plain import MAX_INT, OUTCOMES, call_outcome

__all__ = [
    "ACCESS_LEVELS",
    "KINDS",
    "AccessLevel",
    "Artifact",
    "CallRecord",
    "Grant",
    "LineageCall",
    "LineageGraph",
    "ServiceEntry",
    "UsageRow",
    "Version",
    "level_at_least",
]

#: resource kinds the registry stores; a config's "kind" must be one of these.
KINDS: tuple[str, ...] = ("function", "module", "instance", "cluster", "env")

AccessLevel = Literal["read", "write", "owner"]
#: read = call and load, write = save / redeploy / tag / rollback, owner = share.
ACCESS_LEVELS: tuple[str, ...] = ("read", "write", "owner")


def level_at_least(have: str | None, need: str) -> bool:
    """True when access level ``have`` includes ``need`` (owner ⊃ write ⊃ read)."""
    return have is not None and ACCESS_LEVELS.index(have) >= ACCESS_LEVELS.index(need)


def _now() -> datetime:
    return datetime.now(UTC)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)  # built at first use, not import


class Version(_Model):
    """One immutable saved version of a named resource."""

    name: str = Field(description="full name 'namespace/name'")
    version: int = Field(ge=1, description="1, 2, 3 … per name, never reused")
    kind: str = Field(description="function | module | instance | cluster | env")
    config: dict[str, Any] = Field(
        description="the resource's config(), with 'kind'; env/cluster specs inside"
    )
    code_hash: str | None = Field(None, description="content hash of the synced code tree")
    import_path: str | None = Field(None, description="'pkg.mod:qualname' of the code, when it has one")
    saved_by: str = Field(description="who saved it (user or token principal)")
    saved_at: datetime = Field(default_factory=_now)
    tags: list[str] = Field(default_factory=list, description="tags pointing at this version, e.g. 'prod'")
    copied_from: int | None = Field(None, description="set by rollback: the version this one copies")

    @property
    def namespace(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def short_name(self) -> str:
        return self.name.split("/", 1)[1]

    @property
    def ref(self) -> str:
        """A reference that always resolves to exactly this version: 'ns/name@N'."""
        return f"{self.name}@{self.version}"


class ServiceEntry(_Model):
    """One row of ``list()``: a name, its kind and its latest version."""

    name: str
    kind: str
    latest: int
    tags: dict[str, int] = Field(default_factory=dict)
    updated_at: datetime
    updated_by: str


class Artifact(_Model):
    """Something a call read or wrote: a URI (``s3://bucket/ckpt``, ``file:///data/x``, a table name) and, when the
    code said so, its version (a string; numbers are accepted and kept as text)."""

    uri: str = Field(min_length=1, max_length=1024, pattern=r"^[^\x00]+$")
    version: str | None = Field(None, max_length=256, pattern=r"^[^\x00]*$")

    @model_validator(mode="before")
    @classmethod
    def _version_as_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("version"), int | float):
            data = {**data, "version": str(data["version"])}
        return data

    @property
    def key(self) -> tuple[str, str]:
        return (self.uri, self.version or "")

    def __str__(self) -> str:
        return f"{self.uri}@{self.version}" if self.version else self.uri


class CallRecord(_Model):
    """One call of a saved service, as recorded for lineage and usage.

    ``service=`` and ``seconds=`` are accepted for ``name`` / ``duration_s``; an exception type name given as
    ``outcome`` becomes ``error_type`` with outcome ``error`` (``oom`` / ``cancelled`` / ``timeout`` when it says so).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, defer_build=True)

    name: str = Field(
        validation_alias=AliasChoices("name", "service"),
        description="service reference as called ('embed', 'team/embed'); resolved to 'ns/name' on write",
    )
    version: int | None = Field(None, ge=1, le=MAX_INT, description="the version that served the call")
    call_id: str = Field(min_length=1, max_length=256)
    method: str | None = Field(None, max_length=128, description="method of a module/instance service")
    caller: str | None = Field(
        None, max_length=256, description="user who called; filled from the identity when None"
    )
    run_id: str | None = Field(
        None, max_length=512, description="orchestrator run id (Airflow/Prefect/Dagster)"
    )
    duration_s: float = Field(
        0.0, ge=0, allow_inf_nan=False, validation_alias=AliasChoices("duration_s", "seconds")
    )
    outcome: Literal["ok", "error", "cancelled", "oom", "timeout"] = "ok"
    error_type: str | None = Field(
        None, max_length=256, description="exception type name when outcome is not ok"
    )
    instance_type: str | None = Field(None, max_length=128)
    started_at: datetime = Field(default_factory=_now)
    cluster: str | None = Field(None, max_length=256, description="the cluster that served the call")
    inputs: list[Artifact] = Field(
        default_factory=list, max_length=10_000, description="what the remote code read (tether.lineage.input)"
    )
    outputs: list[Artifact] = Field(
        default_factory=list, max_length=10_000, description="what the remote code wrote (tether.lineage.output)"
    )

    @model_validator(mode="before")
    @classmethod
    def _outcome_from_exception_name(cls, data: Any) -> Any:
        if isinstance(data, dict):
            outcome = data.get("outcome")
            if isinstance(outcome, str) and outcome not in OUTCOMES:
                data = {**data, "outcome": call_outcome(outcome)[0]}
                data.setdefault("error_type", outcome)
        return data


class UsageRow(_Model):
    """Calls of one service by one caller at one version, aggregated."""

    caller: str
    version: int | None
    calls: int
    errors: int
    total_s: float
    mean_s: float
    max_s: float
    last_at: datetime | None = None
    run_ids: int = Field(0, description="distinct orchestrator runs among these calls")


class Grant(_Model):
    """An access grant: ``principal`` (user or team) has ``access_level`` on ``name`` ('ns/name' or 'ns/*')."""

    name: str
    principal: str
    access_level: AccessLevel
    granted_by: str
    granted_at: datetime = Field(default_factory=_now)


class LineageCall(_Model):
    """One recorded call as a node of a lineage graph: which code version ran where, for whom, on what."""

    service: str = Field(description="'ns/name'")
    version: int | None
    call_id: str
    method: str | None = None
    caller: str
    run_id: str | None = None
    cluster: str | None = None
    instance_type: str | None = None
    duration_s: float
    outcome: str
    started_at: datetime
    code_hash: str | None = Field(None, description="the code of that service version")
    import_path: str | None = None
    inputs: list[Artifact] = Field(default_factory=list)
    outputs: list[Artifact] = Field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.service}@{self.version}" if self.version is not None else self.service


class LineageGraph(_Model):
    """The calls and artifacts reachable from ``root``: ``upstream`` = what produced it and from which inputs,
    ``downstream`` = what read its outputs, transitively. Calls of services the asker may not read are left out
    (counted in ``hidden``)."""

    root: str
    direction: Literal["upstream", "downstream"]
    calls: list[LineageCall] = Field(default_factory=list)
    artifacts: list[Artifact] = Field(default_factory=list)
    hidden: int = 0
    truncated: bool = Field(False, description="the depth or size limit cut the walk short")

    def producers_of(self, uri: str, version: str | None = None) -> list[LineageCall]:
        """Calls in the graph that wrote ``uri`` (at ``version`` when given)."""
        return [
            c for c in self.calls
            if any(o.uri == uri and (version is None or o.version == version) for o in c.outputs)
        ]

    def services(self) -> list[str]:
        """'ns/name@version' of every call in the graph, in walk order, once each."""
        return list(dict.fromkeys(c.ref for c in self.calls))
