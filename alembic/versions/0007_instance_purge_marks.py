"""instance purge marks

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

Storage lifecycle: each instance row records when the purger deleted its file, so that a study received again
after a purge is assembled from the instances on disk now (a re-sent instance clears its row's mark) and the
views count what is still stored.
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: SQLite adds it in place (no rebuild of a large instances table), PostgreSQL instantly.
    op.add_column('instances', sa.Column('purged_at', sa.DateTime(timezone=True), nullable=True))
    # Instances of studies purged before this revision: their files are gone.
    op.execute(sa.text(
        "UPDATE instances SET purged_at = (SELECT studies.instances_purged_at FROM studies JOIN series "
        "ON series.study_id = studies.id WHERE series.id = instances.series_id) "
        "WHERE series_id IN (SELECT series.id FROM series JOIN studies ON series.study_id = studies.id "
        "WHERE studies.instances_purged_at IS NOT NULL)"))


def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('purged_at')
