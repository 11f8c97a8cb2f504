"""jobs and study assemblies

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

The job table is the truth about pending study processing (APScheduler only times it); each job's
assembly outcome (joint, laterality, chosen planes and why) is kept in study_assemblies.
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('last_instance_id', sa.Integer(), nullable=False),
    sa.Column('supersedes_job_id', sa.Integer(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ),
    sa.ForeignKeyConstraint(['supersedes_job_id'], ['jobs.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_jobs_state', 'jobs', ['state'], unique=False)
    op.create_index('ix_jobs_study_id', 'jobs', ['study_id'], unique=False)

    op.create_table('study_assemblies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('joint', sa.String(length=16), nullable=False),
    sa.Column('laterality', sa.String(length=1), nullable=False),
    sa.Column('completeness_reason', sa.Text(), nullable=False),
    sa.Column('skip_reason', sa.Text(), nullable=True),
    sa.Column('summary', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id')
    )
    op.create_index('ix_study_assemblies_study_id', 'study_assemblies', ['study_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_study_assemblies_study_id', table_name='study_assemblies')
    op.drop_table('study_assemblies')
    op.drop_index('ix_jobs_study_id', table_name='jobs')
    op.drop_index('ix_jobs_state', table_name='jobs')
    op.drop_table('jobs')
