"""Messages of delegated exports: ArcGIS exportTiles job messages and arcpy geoprocessing messages.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

A table of its own rather than ``job_events``: a server job can say hundreds of things, each with
the server's own type (``esriJobMessageTypeInformative``...) and who said it, and ``cacheorch
job`` keeps its events short.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("created", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_messages_job_id_jobs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_messages")),
    )
    op.create_index(op.f("ix_job_messages_job_id"), "job_messages", ["job_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_job_messages_job_id"), table_name="job_messages")
    op.drop_table("job_messages")
