"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25

Also makes audit_events append-only with triggers that refuse UPDATE and DELETE.
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('associations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('calling_ae', sa.String(length=16), nullable=False),
    sa.Column('called_ae', sa.String(length=16), nullable=False),
    sa.Column('peer_host', sa.String(length=64), nullable=False),
    sa.Column('peer_port', sa.Integer(), nullable=False),
    sa.Column('tls_subject', sa.String(length=512), nullable=True),
    sa.Column('accepted', sa.Boolean(), nullable=False),
    sa.Column('reject_reason', sa.String(length=128), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('end_state', sa.String(length=16), nullable=True),
    sa.Column('instances_received', sa.Integer(), nullable=False),
    sa.Column('instances_failed', sa.Integer(), nullable=False),
    sa.Column('bytes_received', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=48), nullable=False),
    sa.Column('severity', sa.String(length=8), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('association_id', sa.Integer(), nullable=True),
    sa.Column('calling_ae', sa.String(length=16), nullable=True),
    sa.Column('peer_host', sa.String(length=64), nullable=True),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('details', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_events_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_study_instance_uid'), ['study_instance_uid'], unique=False)

    op.create_table('studies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_description', sa.String(length=128), nullable=True),
    sa.Column('accession_number', sa.String(length=16), nullable=True),
    sa.Column('patient_age', sa.String(length=4), nullable=True),
    sa.Column('patient_sex', sa.String(length=16), nullable=True),
    sa.Column('patient_size', sa.Float(), nullable=True),
    sa.Column('patient_weight', sa.Float(), nullable=True),
    sa.Column('first_received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('study_instance_uid')
    )
    op.create_table('series',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('series_number', sa.Integer(), nullable=True),
    sa.Column('series_description', sa.String(length=128), nullable=True),
    sa.Column('protocol_name', sa.String(length=128), nullable=True),
    sa.Column('body_part_examined', sa.String(length=32), nullable=True),
    sa.Column('laterality', sa.String(length=4), nullable=True),
    sa.Column('receive_coil_name', sa.String(length=64), nullable=True),
    sa.Column('frame_of_reference_uid', sa.String(length=64), nullable=True),
    sa.Column('instance_count', sa.Integer(), nullable=False),
    sa.Column('first_received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('series_instance_uid')
    )
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_series_study_id'), ['study_id'], unique=False)

    op.create_table('instances',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_id', sa.Integer(), nullable=False),
    sa.Column('association_id', sa.Integer(), nullable=True),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('file_path', sa.String(length=300), nullable=False),
    sa.Column('file_size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('calling_ae', sa.String(length=16), nullable=True),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('instance_number', sa.Integer(), nullable=True),
    sa.Column('acquisition_number', sa.Integer(), nullable=True),
    sa.Column('image_type', sa.String(length=128), nullable=True),
    sa.Column('rows', sa.Integer(), nullable=True),
    sa.Column('columns', sa.Integer(), nullable=True),
    sa.Column('number_of_frames', sa.Integer(), nullable=True),
    sa.Column('image_orientation_patient', sa.String(length=160), nullable=True),
    sa.Column('image_position_patient', sa.String(length=120), nullable=True),
    sa.Column('pixel_spacing', sa.String(length=64), nullable=True),
    sa.Column('slice_thickness', sa.Double(), nullable=True),
    sa.Column('spacing_between_slices', sa.Double(), nullable=True),
    sa.Column('slice_location', sa.Double(), nullable=True),
    sa.Column('echo_number', sa.Integer(), nullable=True),
    sa.Column('echo_time', sa.Double(), nullable=True),
    sa.Column('repetition_time', sa.Double(), nullable=True),
    sa.Column('inversion_time', sa.Double(), nullable=True),
    sa.Column('flip_angle', sa.Double(), nullable=True),
    sa.Column('scanning_sequence', sa.String(length=64), nullable=True),
    sa.Column('sequence_variant', sa.String(length=64), nullable=True),
    sa.Column('scan_options', sa.String(length=128), nullable=True),
    sa.Column('mr_acquisition_type', sa.String(length=4), nullable=True),
    sa.Column('magnetic_field_strength', sa.Double(), nullable=True),
    sa.Column('images_in_acquisition', sa.Integer(), nullable=True),
    sa.Column('image_laterality', sa.String(length=4), nullable=True),
    sa.ForeignKeyConstraint(['association_id'], ['associations.id'], ),
    sa.ForeignKeyConstraint(['series_id'], ['series.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sop_instance_uid')
    )
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instances_series_id'), ['series_id'], unique=False)


    _create_append_only_triggers()


_SQLITE_TRIGGERS = [
    "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END",
    "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END",
]

_POSTGRES_TRIGGERS = [
    "CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'audit_events is append-only'; END $$",
    "CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events "
    "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()",
]


def _create_append_only_triggers() -> None:
    dialect = op.get_bind().dialect.name
    for statement in _SQLITE_TRIGGERS if dialect == "sqlite" else _POSTGRES_TRIGGERS:
        op.execute(statement)


def _drop_append_only_triggers() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER audit_events_no_update")
        op.execute("DROP TRIGGER audit_events_no_delete")
    else:
        op.execute("DROP TRIGGER audit_events_no_change ON audit_events")
        op.execute("DROP FUNCTION audit_events_append_only()")


def downgrade() -> None:
    _drop_append_only_triggers()
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instances_series_id'))

    op.drop_table('instances')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_study_id'))

    op.drop_table('series')
    op.drop_table('studies')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_events_study_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_audit_events_kind'))
        batch_op.drop_index(batch_op.f('ix_audit_events_at'))

    op.drop_table('audit_events')
    op.drop_table('associations')
