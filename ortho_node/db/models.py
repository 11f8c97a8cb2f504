"""SQLAlchemy 2.0 models of everything the node records: associations, studies, series, instances, audit.

The schema is created and changed only by the Alembic migrations in ``alembic/versions``; these classes
describe it for queries. Timestamps are timezone-aware UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (JSON, BigInteger, Date, DateTime, Float, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint, false)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ortho_node.clock import utcnow

UID = String(64)
AE = String(16)


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class Association(Base):
    """One DICOM association request, accepted or rejected, with what it carried."""

    __tablename__ = "associations"

    id: Mapped[int] = mapped_column(primary_key=True)
    calling_ae: Mapped[str] = mapped_column(AE)
    called_ae: Mapped[str] = mapped_column(AE)
    peer_host: Mapped[str] = mapped_column(String(64))
    peer_port: Mapped[int] = mapped_column(Integer)
    tls_subject: Mapped[str | None] = mapped_column(String(512))
    accepted: Mapped[bool]
    reject_reason: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[dt.datetime | None]
    end_state: Mapped[str | None] = mapped_column(String(16))  # released, aborted, rejected
    instances_received: Mapped[int] = mapped_column(default=0)
    instances_failed: Mapped[int] = mapped_column(default=0)
    bytes_received: Mapped[int] = mapped_column(BigInteger, default=0)


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (Index("ix_studies_last_received_at", "last_received_at"),  # the console's first page
                      Index("ix_studies_accession_number", "accession_number"),
                      Index("ix_studies_patient_id", "patient_id"), Index("ix_studies_study_date", "study_date"))

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_description: Mapped[str | None] = mapped_column(String(128))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    patient_age: Mapped[str | None] = mapped_column(String(4))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    patient_size: Mapped[float | None] = mapped_column(Float)  # metres
    patient_weight: Mapped[float | None] = mapped_column(Float)  # kilograms
    first_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Storage lifecycle (ortho_node.retention): the row outlives the files, so the history stays readable.
    keep: Mapped[bool] = mapped_column(default=False, server_default=false())  # never purged (ortho-node keep)
    keep_reason: Mapped[str | None] = mapped_column(String(128))
    instances_purged_at: Mapped[dt.datetime | None]
    purge_reason: Mapped[str | None] = mapped_column(Text)
    results_purged_at: Mapped[dt.datetime | None]
    purge_claimed_at: Mapped[dt.datetime | None]  # a purger's lease while it deletes this study's files
    # Issue 24 (console and API search): patient identifiers shown only behind a login, never logged; the
    # purger clears them with the study's instances.
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(200))
    study_date: Mapped[dt.date | None] = mapped_column(Date)
    # An operator's mark (console, API): jobs of the study end skipped instead of analysing it.
    not_for_analysis: Mapped[bool] = mapped_column(default=False, server_default=false())
    not_for_analysis_reason: Mapped[str | None] = mapped_column(String(128))
    # When its completeness must next be decided (the last arrival, or the time a waiting study looks again);
    # NULL: every instance is covered by a job. A receiver takes over a decision overdue by more than a lease.
    decision_due_at: Mapped[dt.datetime | None] = mapped_column(index=True)

    series: Mapped[list[Series]] = relationship(back_populates="study", order_by="Series.id")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None]
    series_description: Mapped[str | None] = mapped_column(String(128))
    protocol_name: Mapped[str | None] = mapped_column(String(128))
    body_part_examined: Mapped[str | None] = mapped_column(String(32))
    laterality: Mapped[str | None] = mapped_column(String(4))
    receive_coil_name: Mapped[str | None] = mapped_column(String(64))
    frame_of_reference_uid: Mapped[str | None] = mapped_column(UID)
    instance_count: Mapped[int] = mapped_column(default=0)
    first_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series", order_by="Instance.id")


class Instance(Base):
    """A stored SOP instance and the header facts later stages need (no decoding required)."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    association_id: Mapped[int | None] = mapped_column(ForeignKey("associations.id"))
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    file_path: Mapped[str] = mapped_column(String(300))  # relative to the data folder
    file_size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    calling_ae: Mapped[str | None] = mapped_column(AE)
    # The accept rule ([accept]) that keeps it out of analysis; NULL: analysed.
    ignored_by: Mapped[str | None] = mapped_column(String(64))
    # When the purger (ortho_node.retention) deleted its file; NULL: on disk. A re-sent instance clears it.
    purged_at: Mapped[dt.datetime | None]

    modality: Mapped[str | None] = mapped_column(String(16))
    instance_number: Mapped[int | None]
    acquisition_number: Mapped[int | None]
    image_type: Mapped[str | None] = mapped_column(String(128))
    rows: Mapped[int | None]
    columns: Mapped[int | None]
    number_of_frames: Mapped[int | None]
    image_orientation_patient: Mapped[str | None] = mapped_column(String(160))  # backslash-separated
    image_position_patient: Mapped[str | None] = mapped_column(String(120))
    pixel_spacing: Mapped[str | None] = mapped_column(String(64))
    slice_thickness: Mapped[float | None]
    spacing_between_slices: Mapped[float | None]
    slice_location: Mapped[float | None]
    echo_number: Mapped[int | None]
    echo_time: Mapped[float | None]
    repetition_time: Mapped[float | None]
    inversion_time: Mapped[float | None]
    flip_angle: Mapped[float | None]
    scanning_sequence: Mapped[str | None] = mapped_column(String(64))
    sequence_variant: Mapped[str | None] = mapped_column(String(64))
    scan_options: Mapped[str | None] = mapped_column(String(128))
    mr_acquisition_type: Mapped[str | None] = mapped_column(String(4))
    magnetic_field_strength: Mapped[float | None]
    images_in_acquisition: Mapped[int | None]
    image_laterality: Mapped[str | None] = mapped_column(String(4))

    series: Mapped[Series] = relationship(back_populates="instances")


class AuditEvent(Base):
    """Append-only audit trail; database triggers refuse UPDATE and DELETE."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(48), index=True)
    severity: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    association_id: Mapped[int | None]
    calling_ae: Mapped[str | None] = mapped_column(AE)
    peer_host: Mapped[str | None] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(UID, index=True)
    series_instance_uid: Mapped[str | None] = mapped_column(UID)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    details: Mapped[dict[str, Any] | None]


class Job(Base):
    """One unit of study processing; this table, not the timer store, is the truth about pending work.

    States (plain text, no constraint): pending -> running -> succeeded | skipped | failed | superseded (a newer
    job of the same study finished). ``skipped``: the study cannot be analysed; the cause is in ``last_error``.
    ``last_instance_id`` is the newest instance row the job was queued for: a study with instances beyond
    it has unprocessed material and gets a superseding job, never a duplicate.
    """

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text)  # why it was queued: the completeness decision or a request
    last_instance_id: Mapped[int] = mapped_column(Integer)
    supersedes_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    # The process running it (nodes.id) and until when, renewed by its heartbeat (ortho_node.cluster.lease).
    claimed_by: Mapped[str | None] = mapped_column(String(64), index=True)
    lease_expires_at: Mapped[dt.datetime | None]

    study: Mapped[Study] = relationship()


class StudyAssembly(Base):
    """The persisted outcome of assembling a study for one job: joint, laterality, planes and why."""

    __tablename__ = "study_assemblies"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    outcome: Mapped[str] = mapped_column(String(16))  # assembled, skipped
    joint: Mapped[str] = mapped_column(String(16))
    laterality: Mapped[str] = mapped_column(String(1))  # R, L, U (unknown or conflicting)
    completeness_reason: Mapped[str] = mapped_column(Text)
    skip_reason: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[dict[str, Any]]  # AssembledStudy.summary(): planes, chosen series and why, conflicts


class DeliveryItem(Base):
    """One result object owed to one destination: the durable delivery queue (``ortho_node.delivery``).

    States: pending -> delivered | failed (a permanent rejection, or transient failures for longer than
    ``delivery.retry_for_hours``). Unique per (destination, SOP Instance UID): queueing the same object
    twice, or rebuilding it with the same UID, never sends it twice.
    """

    __tablename__ = "delivery_items"
    __table_args__ = (UniqueConstraint("destination", "sop_instance_uid", name="uq_delivery_items_destination_sop"),
                      Index("ix_delivery_items_due", "state", "next_attempt_at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    destination: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    kind: Mapped[str] = mapped_column(String(16))  # seg, sr, summary
    file_path: Mapped[str] = mapped_column(String(1024))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    queued_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_attempt_at: Mapped[dt.datetime | None]
    delivered_at: Mapped[dt.datetime | None]
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    # The process sending it (nodes.id) and until when; cleared when the attempt is recorded.
    claimed_by: Mapped[str | None] = mapped_column(String(64), index=True)
    lease_expires_at: Mapped[dt.datetime | None]


class TimelineEntry(Base):
    """One step in a study's life (``ortho_node.audit.timeline``): ready and why, job states, assembly, inference,
    objects built, each delivery acknowledged or flagged. Written in the transaction of the step it records."""

    __tablename__ = "study_timeline"
    __table_args__ = (Index("ix_study_timeline_step_at", "step", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    job_id: Mapped[int | None]
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    step: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None]


class StudyResult(Base):
    """One result set built for a study: the model (name, version, card) that made it, the findings and
    the objects written, with the inference start and end."""

    __tablename__ = "study_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    job_id: Mapped[int | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    joint: Mapped[str] = mapped_column(String(16))
    laterality: Mapped[str | None] = mapped_column(String(1))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    model_card: Mapped[dict[str, Any]]
    findings: Mapped[list[Any]] = mapped_column(JSON)  # [{label, probability, threshold, present}]
    objects: Mapped[list[Any]] = mapped_column(JSON)  # [{kind, sop_instance_uid, series_instance_uid, ...}]
    inference_started_at: Mapped[dt.datetime | None]
    inference_finished_at: Mapped[dt.datetime | None]
    superseded_by: Mapped[int | None]  # the newer study_results row of the same study
    files_removed_at: Mapped[dt.datetime | None]  # the objects' files deleted (the row and its list stay)
    files_removed_reason: Mapped[str | None] = mapped_column(String(32))  # superseded, retention


# -- Issue 24: operator state of the console and the REST API -----------------------------------------------------
class DestinationState(Base):
    """A destination an operator paused (``ortho_node.delivery.pause``): the delivery worker leaves its queue
    alone until it is resumed. No row: not paused."""

    __tablename__ = "destination_states"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    paused: Mapped[bool] = mapped_column(default=False, server_default=false())
    reason: Mapped[str | None] = mapped_column(String(128))
    changed_by: Mapped[str | None] = mapped_column(String(64))
    changed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A REST API bearer token (``ortho_node.access.tokens``): only its SHA-256 digest is stored; ``prefix``
    (the token's first characters) lets an administrator tell tokens apart."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))  # viewer, operator
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]


# -- Issue 25: the processes sharing one database ---------------------------------------------------------------
class Node(Base):
    """One ``ortho-node serve`` process sharing the database (``ortho_node.cluster``): what it does, where, with
    which code and model, and its last heartbeat. A process that stopped cleanly has ``stopped_at``."""

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))  # all, receive, process
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(32))
    model_version: Mapped[str | None] = mapped_column(String(64))  # the model card's; NULL: no model loaded
    gpu: Mapped[str | None] = mapped_column(String(128))  # the CUDA device's name; NULL: none used
    heartbeat_interval: Mapped[float] = mapped_column(Float)  # s, as this process was configured
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_heartbeat_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[dt.datetime | None]


# -- Issue 26: the model registry -------------------------------------------------------------------------------
class RegisteredModel(Base):
    """A task model folder imported into the node (``ortho-node model import``): its card and weights copied
    under ``<data>/models``, verified, identified by the sha256 of its card (which holds the weights' hash)."""

    __tablename__ = "registered_models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    card_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    folder: Mapped[str] = mapped_column(String(300))  # relative to the data folder
    source: Mapped[str] = mapped_column(String(1024))  # the folder it was imported from
    imported_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    imported_by: Mapped[str] = mapped_column(String(64))
    card: Mapped[dict[str, Any]]


class ModelActivation(Base):
    """One change of the model a node serves; the newest row is the active model (``model_id`` NULL: the
    bundled model). ``replaces_id`` is the activation this one was stacked on: a rollback returns to it."""

    __tablename__ = "model_activations"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("registered_models.id"))
    action: Mapped[str] = mapped_column(String(16))  # activate, rollback
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    by: Mapped[str] = mapped_column(String(64))
    replaces_id: Mapped[int | None] = mapped_column(ForeignKey("model_activations.id"))


class ShadowChoice(Base):
    """One choice of the shadow model (``ortho-node model shadow``): an imported candidate run beside the active
    model on every study, its results stored and never delivered. The newest row holds; ``model_id`` NULL:
    cleared, no shadow."""

    __tablename__ = "model_shadows"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("registered_models.id"))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    by: Mapped[str] = mapped_column(String(64))


class ShadowResult(Base):
    """A shadow model's result for one study: its objects written under ``<data>/shadow`` (never queued for
    delivery), its findings, and its agreement with the active model's result of the same job (per structure
    the voxels both / only-active / only-shadow counted, per finding both calls)."""

    __tablename__ = "shadow_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    job_id: Mapped[int | None]
    active_result_id: Mapped[int | None] = mapped_column(ForeignKey("study_results.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("registered_models.id"))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    active_model_version: Mapped[str] = mapped_column(String(64))
    findings: Mapped[list[Any]] = mapped_column(JSON)
    objects: Mapped[list[Any]] = mapped_column(JSON)  # paths of the written objects, relative to the data folder
    agreement: Mapped[dict[str, Any]]
