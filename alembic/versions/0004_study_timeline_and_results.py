"""study timeline and results

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

The per-study timeline (ready and why, job states, assembly, inference, objects built, every delivery
acknowledged or flagged) and one row per built result set with the model card version that produced it.
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('study_timeline',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('step', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('data', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_study_timeline_study_instance_uid', 'study_timeline', ['study_instance_uid'], unique=False)
    op.create_index('ix_study_timeline_step_at', 'study_timeline', ['step', 'at'], unique=False)

    op.create_table('study_results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('joint', sa.String(length=16), nullable=False),
    sa.Column('laterality', sa.String(length=1), nullable=True),
    sa.Column('model_name', sa.String(length=128), nullable=False),
    sa.Column('model_version', sa.String(length=64), nullable=False),
    sa.Column('model_card', sa.JSON(), nullable=False),
    sa.Column('findings', sa.JSON(), nullable=False),
    sa.Column('objects', sa.JSON(), nullable=False),
    sa.Column('inference_started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('inference_finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_study_results_study_instance_uid', 'study_results', ['study_instance_uid'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_study_results_study_instance_uid', table_name='study_results')
    op.drop_table('study_results')
    op.drop_index('ix_study_timeline_step_at', table_name='study_timeline')
    op.drop_index('ix_study_timeline_study_instance_uid', table_name='study_timeline')
    op.drop_table('study_timeline')
