"""Durable runs: step checkpoints, and a run's history of interrupted attempts.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pipeserve_runs", sa.Column("attempts", sa.JSON))
    op.create_table(
        "pipeserve_checkpoints",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("step", sa.String(255), primary_key=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("pipeline_version", sa.String(64), nullable=False),
        sa.Column("formats", sa.JSON, nullable=False),
        sa.Column("sizes", sa.JSON, nullable=False),
        sa.Column("data", sa.LargeBinary),
        sa.Column("location", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_pipeserve_checkpoints_location", "pipeserve_checkpoints", ["location"])


def downgrade() -> None:
    op.drop_table("pipeserve_checkpoints")
    with op.batch_alter_table("pipeserve_runs") as batch:
        batch.drop_column("attempts")
