"""Maps: a map job (``run --map``) owns the jobs of its layers.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

A table of its own rather than a kind of job: a map has no service, levels or bundles; what it
has is its layers in order, each with a role, a title and either a job or a skip reason, which
``maps.layers`` keeps as JSON (the manifest's layer list, without the job totals, which the
layer jobs hold). ``jobs.map_id`` links each layer job to its map; a job without a map is an
ordinary one, so nothing changes for existing catalogs.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "maps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("format", sa.String(length=32), nullable=False),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("layers", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("finished_at", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_maps")),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("map_id", sa.Integer(), nullable=True))
        batch.create_index(batch.f("ix_jobs_map_id"), ["map_id"])
        batch.create_foreign_key(batch.f("fk_jobs_map_id_maps"), "maps", ["map_id"], ["id"],
                                 ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(batch.f("fk_jobs_map_id_maps"), type_="foreignkey")
        batch.drop_index(batch.f("ix_jobs_map_id"))
        batch.drop_column("map_id")
    op.drop_table("maps")
