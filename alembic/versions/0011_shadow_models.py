"""shadow models

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

Shadow mode (issue 26): which imported candidate model runs beside the active one (``ortho-node model shadow``,
who chose it and when; the newest row holds, a NULL model clears it), and each study's shadow result with its
agreement with the active model's result. Shadow results are never delivered.
"""

from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'model_shadows',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('model_id', sa.Integer(), nullable=True),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('by', sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(['model_id'], ['registered_models.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_table(
        'shadow_results',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('job_id', sa.Integer(), nullable=True),
        sa.Column('active_result_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('model_id', sa.Integer(), nullable=True),
        sa.Column('model_name', sa.String(length=128), nullable=False),
        sa.Column('model_version', sa.String(length=64), nullable=False),
        sa.Column('active_model_version', sa.String(length=64), nullable=False),
        sa.Column('findings', sa.JSON(), nullable=False),
        sa.Column('objects', sa.JSON(), nullable=False),
        sa.Column('agreement', sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(['active_result_id'], ['study_results.id']),
        sa.ForeignKeyConstraint(['model_id'], ['registered_models.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_shadow_results_study_instance_uid', 'shadow_results', ['study_instance_uid'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_shadow_results_study_instance_uid', table_name='shadow_results')
    op.drop_table('shadow_results')
    op.drop_table('model_shadows')
