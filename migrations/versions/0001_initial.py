"""The first catalog: services, jobs, job levels, bundles, tile errors and events.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Timestamps are ISO-8601 UTC text (``String(32)``; the models wrap it as ``UTCDateTime``). Types
are spelled out here rather than imported from the models, so this revision never changes when
the models do.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Revision identifiers, used by Alembic. Use readable sequential ids: --rev-id 0002.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMESTAMP = sa.String(length=32)


def _counts() -> list[sa.Column]:
    return [sa.Column(name, sa.Integer(), nullable=False)
            for name in ("tiles_written", "tiles_missing", "tiles_failed", "bytes")]


def _job_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f(f"fk_{table}_job_id_jobs"),
                                   ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "services",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=128), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("scheme", sa.JSON(), nullable=False),
        sa.Column("created", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_services")),
        sa.UniqueConstraint("url", "fingerprint", name=op.f("uq_services_url_fingerprint")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("service_url", sa.Text(), nullable=False),
        sa.Column("exporter", sa.String(length=64), nullable=False),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("started_at", _TIMESTAMP, nullable=True),
        sa.Column("finished_at", _TIMESTAMP, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("tiles_planned", sa.Integer(), nullable=False),
        *_counts(),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "status IN ('planned', 'running', 'completed', 'partial', 'failed', 'interrupted')",
            name=op.f("ck_jobs_status")),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"],
                                name=op.f("fk_jobs_service_id_services")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_service_id"), "jobs", ["service_id"])
    op.create_index(op.f("ix_jobs_status"), "jobs", ["status"])

    op.create_table(
        "job_levels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("scale", sa.Float(), nullable=False),
        sa.Column("resolution", sa.Float(), nullable=False),
        sa.Column("area_name", sa.Text(), nullable=True),
        sa.Column("tiles_planned", sa.Integer(), nullable=False),
        *_counts(),
        _job_fk("job_levels"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_levels")),
        sa.UniqueConstraint("job_id", "level", name=op.f("uq_job_levels_job_id_level")),
    )
    op.create_table(
        "job_bundles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("bundle_row", sa.Integer(), nullable=False),
        sa.Column("bundle_col", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        *_counts(),
        sa.Column("finished_at", _TIMESTAMP, nullable=False),
        sa.CheckConstraint("state IN ('done', 'failed')", name=op.f("ck_job_bundles_state")),
        _job_fk("job_bundles"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_bundles")),
        sa.UniqueConstraint("job_id", "level", "bundle_row", "bundle_col",
                            name=op.f("uq_job_bundles_job_id_level_bundle_row_bundle_col")),
    )
    op.create_table(
        "job_tile_errors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("bundle_id", sa.Integer(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("row", sa.Integer(), nullable=False),
        sa.Column("col", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["bundle_id"], ["job_bundles.id"],
                                name=op.f("fk_job_tile_errors_bundle_id_job_bundles"),
                                ondelete="CASCADE"),
        _job_fk("job_tile_errors"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_tile_errors")),
    )
    op.create_index(op.f("ix_job_tile_errors_bundle_id"), "job_tile_errors", ["bundle_id"])
    op.create_index(op.f("ix_job_tile_errors_job_id_level_row_col"), "job_tile_errors",
                    ["job_id", "level", "row", "col"])

    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("created", _TIMESTAMP, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        _job_fk("job_events"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_events")),
    )
    op.create_index(op.f("ix_job_events_job_id"), "job_events", ["job_id"])


def downgrade() -> None:
    # Dependants first; dropping a table drops its indexes.
    for table in ("job_events", "job_tile_errors", "job_bundles", "job_levels", "jobs",
                  "services"):
        op.drop_table(table)
