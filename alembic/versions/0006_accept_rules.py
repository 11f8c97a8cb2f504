"""accept rules

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

Accept rules ([accept]): an instance kept but not analysed records the rule that ignored it; the scheduler
never queues it, and a study whose every instance was ignored shows the rule as its state.
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: SQLite adds it in place, no table rebuild of a large archive.
    op.add_column('instances', sa.Column('ignored_by', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('ignored_by')
