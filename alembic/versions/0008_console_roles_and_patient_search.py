"""console actions, API tokens and patient search

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

Issue 24: the studies row gains the patient's ID and name and the study date (from the header at intake; shown
only behind the console's and the API's login, never logged; cleared when the purger deletes the study's
instances) and the operator's "not for analysis" mark; indexes serve the console's search and its first page
(newest first). ``destination_states`` holds a paused destination (the delivery worker skips it);
``api_tokens`` the REST API's bearer tokens, as SHA-256 digests only.

Rows received before this revision have no patient ID, name or study date (the header facts were not kept):
they are found by UID, description or accession number as before.
"""

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable columns (and a server default for the flag): SQLite adds them in place, no rebuild of the table.
    op.add_column('studies', sa.Column('patient_id', sa.String(length=64), nullable=True))
    op.add_column('studies', sa.Column('patient_name', sa.String(length=200), nullable=True))
    op.add_column('studies', sa.Column('study_date', sa.Date(), nullable=True))
    op.add_column('studies', sa.Column('not_for_analysis', sa.Boolean(), nullable=False,
                                       server_default=sa.false()))
    op.add_column('studies', sa.Column('not_for_analysis_reason', sa.String(length=128), nullable=True))
    op.create_index('ix_studies_last_received_at', 'studies', ['last_received_at'])
    op.create_index('ix_studies_accession_number', 'studies', ['accession_number'])
    op.create_index('ix_studies_patient_id', 'studies', ['patient_id'])
    op.create_index('ix_studies_study_date', 'studies', ['study_date'])
    op.create_table(
        'destination_states',
        sa.Column('name', sa.String(length=64), primary_key=True),
        sa.Column('paused', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('reason', sa.String(length=128), nullable=True),
        sa.Column('changed_by', sa.String(length=64), nullable=True),
        sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        'api_tokens',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('digest', sa.String(length=64), nullable=False, unique=True),
        sa.Column('prefix', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table('api_tokens')
    op.drop_table('destination_states')
    for name in ('ix_studies_study_date', 'ix_studies_patient_id', 'ix_studies_accession_number',
                 'ix_studies_last_received_at'):
        op.drop_index(name, table_name='studies')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        for column in ('not_for_analysis_reason', 'not_for_analysis', 'study_date', 'patient_name', 'patient_id'):
            batch_op.drop_column(column)
