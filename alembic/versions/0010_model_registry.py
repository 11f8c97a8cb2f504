"""model registry

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

The node's own models (``ortho-node model import|activate|rollback``): each imported task model folder with
its card and hashes, and every activation or rollback with who made it and when. No activation row: the node
serves the bundled model, as before this revision.
"""

from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'registered_models',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('version', sa.String(length=64), nullable=False),
        sa.Column('card_sha256', sa.String(length=64), nullable=False),
        sa.Column('weights_sha256', sa.String(length=64), nullable=False),
        sa.Column('folder', sa.String(length=300), nullable=False),
        sa.Column('source', sa.String(length=1024), nullable=False),
        sa.Column('imported_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('imported_by', sa.String(length=64), nullable=False),
        sa.Column('card', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('card_sha256'),
    )
    op.create_table(
        'model_activations',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('model_id', sa.Integer(), nullable=True),
        sa.Column('action', sa.String(length=16), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('by', sa.String(length=64), nullable=False),
        sa.Column('replaces_id', sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(['model_id'], ['registered_models.id']),
        sa.ForeignKeyConstraint(['replaces_id'], ['model_activations.id']),
        sa.PrimaryKeyConstraint('id'),
    )


def downgrade() -> None:
    op.drop_table('model_activations')
    op.drop_table('registered_models')
