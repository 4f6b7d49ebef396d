"""Runs and their events.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "pipeserve_runs",
        sa.Column("seq", _BigInt, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(36), nullable=False, unique=True),
        sa.Column("deployment_name", sa.String(255), nullable=False),
        sa.Column("pipeline_name", sa.String(255), nullable=False),
        sa.Column("pipeline_version", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("parameters_used", sa.JSON),
        sa.Column("steps", sa.JSON),
        sa.Column("outputs", sa.Text),
        sa.Column("outputs_omitted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("error", sa.JSON),
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("request_hash", sa.String(64)),
        sa.Column("webhook_url", sa.Text),
        sa.Column("webhook_status", sa.String(16)),
        sa.Column("webhook_attempts", sa.JSON),
        sa.Column("webhook_next_at", sa.Float),
        sa.Column("owner", sa.String(64)),
        sa.Column("lease_expires_at", sa.Float),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.Column("duration", sa.Float),
        sa.UniqueConstraint(
            "deployment_name", "idempotency_key", name="uq_pipeserve_runs_idempotency"
        ),
    )
    op.create_index(
        "ix_pipeserve_runs_deployment_status_seq",
        "pipeserve_runs",
        ["deployment_name", "status", "seq"],
    )
    op.create_index(
        "ix_pipeserve_runs_deployment_created", "pipeserve_runs", ["deployment_name", "created_at"]
    )
    op.create_table(
        "pipeserve_run_events",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("event_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pipeserve_run_events")
    op.drop_index("ix_pipeserve_runs_deployment_created", "pipeserve_runs")
    op.drop_index("ix_pipeserve_runs_deployment_status_seq", "pipeserve_runs")
    op.drop_table("pipeserve_runs")
