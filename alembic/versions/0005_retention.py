"""retention

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

Storage lifecycle (ortho_node.retention): a study can be marked to keep (never purged), and records when its
received instances and its result objects were deleted and why; a result set records the newer one that
superseded it and when its files were removed. ``purge_claimed_at`` is a purger's lease on a study while it
deletes its files, so purgers in several processes never work on one study at once. The rows themselves stay: the history outlives the files.
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (in place on SQLite too): a batch operation would rebuild ``studies``, and dropping the old
    # table fails on an existing archive (series rows reference it, foreign keys on), besides copying every row.
    op.add_column('studies', sa.Column('keep', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column('studies', sa.Column('keep_reason', sa.String(length=128), nullable=True))
    op.add_column('studies', sa.Column('instances_purged_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('studies', sa.Column('purge_reason', sa.Text(), nullable=True))
    op.add_column('studies', sa.Column('results_purged_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('studies', sa.Column('purge_claimed_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('study_results', sa.Column('superseded_by', sa.Integer(), nullable=True))
    op.add_column('study_results', sa.Column('files_removed_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('study_results', sa.Column('files_removed_reason', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('study_results', schema=None) as batch_op:
        batch_op.drop_column('files_removed_reason')
        batch_op.drop_column('files_removed_at')
        batch_op.drop_column('superseded_by')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('purge_claimed_at')
        batch_op.drop_column('results_purged_at')
        batch_op.drop_column('purge_reason')
        batch_op.drop_column('instances_purged_at')
        batch_op.drop_column('keep_reason')
        batch_op.drop_column('keep')
