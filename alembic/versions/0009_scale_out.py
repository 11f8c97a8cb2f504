"""scale out

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

Several processes share one PostgreSQL database (issue 25): the ``nodes`` table (each process's role, host,
versions, GPU and heartbeat); jobs and delivery items record who claimed them and until when (a lease, renewed
by the holder's heartbeat, taken over by another process once expired); a study records when its completeness
must next be decided (``decision_due_at``), so a receiver can take over the decision of one that died.
"""

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'nodes',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('version', sa.String(length=32), nullable=False),
        sa.Column('model_version', sa.String(length=64), nullable=True),
        sa.Column('gpu', sa.String(length=128), nullable=True),
        sa.Column('heartbeat_interval', sa.Float(), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_heartbeat_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    # Plain ADD COLUMN (in place on SQLite, no table rebuild), nullable: existing rows hold no lease.
    for table in ('jobs', 'delivery_items'):
        op.add_column(table, sa.Column('claimed_by', sa.String(length=64), nullable=True))
        op.add_column(table, sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True))
        op.create_index(f'ix_{table}_claimed_by', table, ['claimed_by'])
    op.add_column('studies', sa.Column('decision_due_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_studies_decision_due_at', 'studies', ['decision_due_at'])


def downgrade() -> None:
    op.drop_index('ix_studies_decision_due_at', table_name='studies')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('decision_due_at')
    for table in ('delivery_items', 'jobs'):
        op.drop_index(f'ix_{table}_claimed_by', table_name=table)
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('lease_expires_at')
            batch_op.drop_column('claimed_by')
    op.drop_table('nodes')
