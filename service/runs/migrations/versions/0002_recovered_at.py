"""A run's `recovered_at`: when lease recovery ended or requeued it on a guess.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pipeserve_runs", sa.Column("recovered_at", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("pipeserve_runs") as batch:
        batch.drop_column("recovered_at")
