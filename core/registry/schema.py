"""The registry's tables (SQLAlchemy Core), one schema for the local SQLite file and the team server's database."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "call_context",
    "calls",
    "grants",
    "lineage",
    "members",
    "metadata",
    "services",
    "tags",
    "token_expiry",
    "tokens",
    "versions",
]

metadata = MetaData()

#: one row per name; versions hang off it
services = Table(
    "tether_services",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("namespace", String(128), nullable=False),
    Column("name", String(128), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("namespace", "name", name="uq_tether_services_name"),
)

#: immutable: rows are only ever inserted; (service, version) is unique so concurrent savers cannot collide
versions = Table(
    "tether_versions",
    metadata,
    Column("service_id", Integer, ForeignKey("tether_services.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("config", Text, nullable=False),
    Column("code_hash", String(256)),
    Column("import_path", String(512)),
    Column("saved_by", String(256), nullable=False),
    Column("saved_at", Float, nullable=False),
    Column("copied_from", Integer),
    PrimaryKeyConstraint("service_id", "version", name="pk_tether_versions"),
)

tags = Table(
    "tether_tags",
    metadata,
    Column("service_id", Integer, ForeignKey("tether_services.id"), nullable=False),
    Column("tag", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("tagged_by", String(256), nullable=False),
    Column("tagged_at", Float, nullable=False),
    PrimaryKeyConstraint("service_id", "tag", name="pk_tether_tags"),
)

#: name is a service name or '*' for the whole namespace
grants = Table(
    "tether_grants",
    metadata,
    Column("namespace", String(128), nullable=False),
    Column("name", String(128), nullable=False),
    Column("principal", String(256), nullable=False),
    Column("level", String(16), nullable=False),
    Column("granted_by", String(256), nullable=False),
    Column("granted_at", Float, nullable=False),
    PrimaryKeyConstraint("namespace", "name", "principal", name="pk_tether_grants"),
)

#: team membership: members of a team own the team's namespace and receive what is shared with the team
members = Table(
    "tether_members",
    metadata,
    Column("team", String(128), nullable=False),
    Column("principal", String(256), nullable=False),
    PrimaryKeyConstraint("team", "principal", name="pk_tether_members"),
)

#: team-server tokens, stored as sha256 hex digests only
tokens = Table(
    "tether_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("principal", String(256), nullable=False),
    Column("created_at", Float, nullable=False),
)

#: when a token stops working (tokens issued without an expiry have no row; a table of its own, so databases
#: made before it need no column added)
token_expiry = Table(
    "tether_token_expiry",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False),
)

#: one row per call; (service, call_id) unique so a re-attached or re-sent record counts once
calls = Table(
    "tether_calls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(257), nullable=False),
    Column("version", Integer),
    Column("call_id", String(256), nullable=False),
    Column("method", String(128)),
    Column("caller", String(256), nullable=False),
    Column("run_id", String(512)),
    Column("duration_s", Float, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("error_type", String(256)),
    Column("instance_type", String(128)),
    Column("started_at", Float, nullable=False),
    UniqueConstraint("service", "call_id", name="uq_tether_calls_call"),
    Index("ix_tether_calls_service", "service"),
)

#: what a call record says beyond the calls table's columns (tables of their own, like token expiry: a database
#: made before them gets them from ``create_all`` and needs no column added); one row per recorded call that
#: named its cluster
call_context = Table(
    "tether_call_context",
    metadata,
    Column("service", String(257), nullable=False),
    Column("call_id", String(256), nullable=False),
    Column("cluster", String(256)),
    PrimaryKeyConstraint("service", "call_id", name="pk_tether_call_context"),
)

#: lineage edges: call (service, call_id) read ('in') or wrote ('out') artifact (uri, version); version '' = the
#: code named none. Unique, so a re-sent call record adds no edge twice.
lineage = Table(
    "tether_lineage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(257), nullable=False),
    Column("call_id", String(256), nullable=False),
    Column("direction", String(3), nullable=False),
    Column("uri", String(1024), nullable=False),
    Column("version", String(256), nullable=False),
    UniqueConstraint("service", "call_id", "direction", "uri", "version", name="uq_tether_lineage_edge"),
    Index("ix_tether_lineage_uri", "uri", "direction"),
    Index("ix_tether_lineage_call", "service", "call_id"),
)
