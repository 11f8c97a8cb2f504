"""Composition root: builds the node's parts from validated settings and runs them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from listeners.api.routes import Api, api_app
from listeners.console.routes import Console, console_app
from listeners.web.listener import TlsFiles, WebListener
from listeners.web.operations import operations_app
from listeners.storescp import StorageSCP
from listeners.worker_pool import WorkerPoolSCP
from ortho_node import __version__
from ortho_node.clock import utcnow
from ortho_node.assembly.assembler import Assembler
from ortho_node.assembly.plan import AssemblyRules
from ortho_node.intake.associations import AssociationLog
from ortho_node.intake.catalog import Catalog
from ortho_node.audit.trail import AuditKind, AuditTrail
from ortho_node.config import ConfigError, Settings
from ortho_node.db import migrations
from ortho_node.db.engine import make_engine, make_session_factory
from ortho_node.delivery.worker import DeliveryService
from ortho_node.intake.accept import AcceptRules
from ortho_node.intake.receive import Intake
from ortho_node.app.logs import silence_identifier_sources
from ortho_node.delivery.queue import ResultFile
from ortho_node.delivery.results import results_folder
from ortho_node.audit.prometheus import Liveness, NodeCollector, health, make_registry
from ortho_node.audit.status import configuration_warnings
from ortho_node.scheduling.pipeline import Locate, Pipeline, ResultStages, StudyPredictor, WrittenResults
from ortho_node.prediction import StudyPrediction
from ortho_node.audit.timeline import BuiltObject
from ortho_node.scheduling.service import Scheduler
from ortho_node.scheduling.timers import TimeSource
from ortho_node.intake.recovery import Recovery
from ortho_node.intake.storage import InstanceStore, is_valid_uid
from ortho_node.app.storage_worker import run_storage_worker, server_ssl_context, storage_policy
from ortho_node.retention.purger import Purger
from ortho_node.retention.superseded import remove_superseded

log = logging.getLogger(__name__)

PURGE_TIMER = "retention:purge"


class Node:
    """The running node: database, storage, intake, the Storage SCP and the scheduler, wired together.

    ``pipeline_factory`` and ``time`` default to the real ones; tests pass a manual clock (and, for crash and
    retry tests, a pipeline whose stage stands in for a slow or failing GPU). With a ``predictor`` (loaded
    once, :func:`load_predictor`; ``serve`` passes the configured model) the pipeline runs inference, writes
    the result objects and queues them for delivery; without one the node receives, assembles and records.
    """

    def __init__(self, settings: Settings, *,
                 pipeline_factory: Callable[..., Pipeline] = Pipeline,
                 time: TimeSource | None = None, predictor: StudyPredictor | None = None) -> None:
        silence_identifier_sources()
        self.settings = settings
        self.engine = make_engine(settings.database_url, busy_timeout=settings.database.busy_timeout)
        self.session_factory = make_session_factory(self.engine)
        self.audit = AuditTrail(self.session_factory)
        self.store = InstanceStore(settings.data_dir, fsync=settings.storage.fsync)
        self.catalog = Catalog(self.engine)
        accept = AcceptRules.from_settings(settings.accept)
        self.intake = Intake(self.store, self.catalog, self.audit, accept=accept)
        self.recovery = Recovery(settings.database_url, self.session_factory, self.store, self.catalog, self.audit,
                                 accept=accept)
        self.assembler = Assembler(self.session_factory, self.store.absolute,
                                   AssemblyRules.from_settings(settings.assembly))
        self.delivery = DeliveryService(settings, self.session_factory)
        stages = (result_stages(settings, self.delivery, predictor, stored_instances(self.catalog, self.store),
                                self.session_factory)
                  if predictor is not None else None)
        self.pipeline = pipeline_factory(self.session_factory, **({"stages": stages} if stages else {}))
        self.scheduler = Scheduler(settings.scheduling, self.session_factory, self.assembler, self.pipeline,
                                   time=time)
        self.intake.add_listener(self.scheduler.watcher)
        self.purger = Purger(settings, self.session_factory, clock=self.scheduler.time, busy=self._receiving)
        self.scp: StorageSCP | WorkerPoolSCP | None = None
        self.console: WebListener | None = None
        self.metrics: WebListener | None = None

    def prepare(self) -> None:
        """Bring the schema up to date and recover from an earlier crash; run before serving."""
        migrations.upgrade(self.engine)
        self.recovery.prepare()

    def start(self) -> StorageSCP | WorkerPoolSCP:
        """Start the scheduler (recovering interrupted jobs and timers), then the Storage SCP."""
        self.scheduler.start()
        retention = self.settings.retention
        if retention.enabled or retention.supersede_results:  # off by default: nothing is deleted by age
            self.scheduler.time.every(PURGE_TIMER, retention.purge_interval, self.purge)
        dicom = self.settings.dicom
        if dicom.workers > 1:
            self.scp = WorkerPoolSCP(self.settings, workers=dicom.workers, intake=self.intake,
                                     target=run_storage_worker)
        else:
            self.scp = StorageSCP(self.settings, intake=self.intake,
                                  association_log=AssociationLog(self.session_factory),
                                  policy=storage_policy(self.settings, self.store),
                                  ssl_context=server_ssl_context(self.settings.tls))
        self.scp.start()
        self.delivery.start()  # resumes whatever the queue held when the node last stopped
        self._start_operations()
        for warning in configuration_warnings(self.settings):
            log.warning("%s", warning)
        self.audit.record(AuditKind.NODE_STARTED, f"node {__version__} started as {dicom.ae_title} on port "
                                                  f"{self.scp.port}")
        return self.scp

    def _start_operations(self) -> None:
        """The admin console and the metrics / health endpoint: ASGI applications served by uvicorn, each on its
        own port and thread when enabled (``listeners.web``)."""
        console, metrics = self.settings.console, self.settings.metrics
        if console.enabled:
            admin = Console(console, self.session_factory, self.audit, warnings=configuration_warnings(self.settings))
            api = api_app(Api(self.session_factory, self.settings.destinations), admin.session_user,
                          version=__version__)
            app = console_app(admin, api=api)
            tls = TlsFiles(console.tls_cert, console.tls_key) if console.tls else None
            self.console = WebListener(app, console.host, console.port, name="admin console", tls=tls)
            self.console.start()
        if metrics.enabled:
            collector = NodeCollector(self.session_factory, self.settings.data_dir, self._min_free_bytes(),
                                      self.liveness())
            self.metrics = WebListener(operations_app(make_registry(collector), self.health), metrics.host,
                                       metrics.port, name="metrics and health check")
            self.metrics.start()

    def _receiving(self) -> bool:
        return self.scp is not None and self.scp.active_associations > 0

    def purge(self) -> None:
        """One purge pass (the scheduled job): a failing pass is logged and the next one tries again."""
        try:
            self.purger.run()
        except (SQLAlchemyError, OSError) as exc:  # database away or a disk error: nothing was marked falsely
            log.error("purge pass failed: %s: %s", type(exc).__name__, exc)

    def liveness(self) -> Liveness:
        return Liveness(scheduler=lambda: self.scheduler.running, delivery=lambda: self.delivery.running,
                        extra={"storage_scp": lambda: self.scp is not None})

    def _min_free_bytes(self) -> int:
        return self.settings.storage.min_free_mb * 1024 * 1024

    def health(self) -> dict:
        """Database reachable, disk above the watermark, scheduler, delivery and Storage SCP running; and the
        configuration warnings (they do not make the node unhealthy)."""
        report = health(self.session_factory, self.settings.data_dir, self._min_free_bytes(), self.liveness())
        return {**report, "warnings": configuration_warnings(self.settings)}

    def stop(self) -> None:
        for server in (self.console, self.metrics):
            if server is not None:
                server.stop()
        self.console = self.metrics = None
        served = self.scp is not None
        if self.scp is not None:
            self.scp.stop()
            self.scp = None
            self.audit.record(AuditKind.NODE_STOPPED, "node stopped")
        self.scheduler.stop()
        self.delivery.stop()
        if served:  # every association has ended: each stored file has its row
            self.recovery.leave_marker()
        self.engine.dispose()


def load_predictor(settings: Settings) -> StudyPredictor | None:
    """The model to serve, loaded once at start-up; None for a receive-only node. A set ``model.path`` pins that
    folder; otherwise the registry's active model (``ortho-node model activate``; the bundled model until one
    is), which the node checks at every study and reloads when it changed.

    Raises :class:`ConfigError` naming the key when the folder, its card or weights, or the device are
    unusable, so ``serve`` stops before it accepts a study it could not analyse.
    """
    model = settings.model
    if not model.enabled:
        log.info("model.enabled is false: studies are received and assembled, not analysed")
        return None
    import torch  # only a node that runs the model pays for importing torch

    if model.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device: cuda was asked for, but no CUDA device is available")
    if model.threads:
        torch.set_num_threads(model.threads)
    if model.path:
        return _load_folder(settings.model_path, f"model.path ({settings.model_path})", model.device)
    from ortho_node.inference.served import ModelLoadError, ServedModel
    from ortho_node.model.registry import ModelRegistry

    session_factory = make_session_factory(make_engine(settings.database_url,
                                                       busy_timeout=settings.database.busy_timeout))
    registry = ModelRegistry.for_settings(settings, session_factory)
    try:
        return ServedModel(registry, lambda folder: _load_folder(folder, f"the active model ({folder})",
                                                                 model.device), AuditTrail(session_factory))
    except ModelLoadError as exc:
        raise ConfigError(f"model.path (empty: {exc})") from None


def _load_folder(folder: Path, where: str, device: str):
    """A predictor on ``folder`` (:class:`ConfigError` saying which part is unusable)."""
    import torch

    from ortho_node.inference.predictor import Predictor
    from ortho_node.model.system import read_system_card

    if not folder.is_dir():
        raise ConfigError(f"{where}: folder does not exist")
    try:
        card = read_system_card(folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # CheckpointError and bad JSON are ValueErrors
        raise ConfigError(f"{where}: model card cannot be read: {exc}") from None
    try:
        predictor = Predictor.from_checkpoint(folder, device)
    except (OSError, ValueError, RuntimeError) as exc:  # missing or altered weights, tensors not matching the card
        raise ConfigError(f"{where}: model {card.name} {card.version} cannot be loaded: {exc}") from None
    log.info("model %s %s loaded from %s on %s (%d CPU threads)", card.name, card.version, folder,
             predictor.device, torch.get_num_threads())
    return predictor


def stored_instances(catalog: Catalog, store: InstanceStore) -> Locate:
    """SOP Instance UID -> its stored file, through the catalog: where the masks' slice references point."""

    def locate(sop_instance_uid: str) -> Path:
        relative = catalog.stored_path(sop_instance_uid)
        if relative is None:
            raise LookupError(f"instance {sop_instance_uid} is not stored")
        return store.absolute(relative)

    return locate


def result_stages(settings: Settings, delivery: DeliveryService, predictor: StudyPredictor,
                  locate: Locate, session_factory: sessionmaker[Session]) -> ResultStages:
    """The stages after assembly: ``predictor``, result objects built by ``reports`` and written under
    ``<data>/results/<study>/job-<id>``, then queued for every destination."""
    from reports.results import build_results, write_result_objects

    def write(prediction: StudyPrediction, job_id: int | None) -> WrittenResults:
        uid = prediction.study_instance_uid
        if not is_valid_uid(uid):
            raise ValueError("prediction for an invalid Study Instance UID")
        folder = results_folder(settings.data_dir, uid, job_id)
        built = build_results(prediction, settings)
        return WrittenResults(write_result_objects(built.datasets, folder, fsync=settings.storage.fsync),
                              built.seg_not_built)

    def describe(path: Path) -> BuiltObject:
        result = ResultFile.read(path)
        return BuiltObject(result.kind, result.sop_instance_uid, result.series_instance_uid, result.sop_class_uid,
                           str(result.path))

    def supersede(study_uid: str) -> None:
        try:
            remove_superseded(session_factory, study_uid, results_root=settings.data_dir / "results",
                              now=utcnow())
        except (SQLAlchemyError, OSError) as exc:  # the new results are delivered anyway; the purge pass retries
            log.error("study %s: superseded results not removed: %s: %s", study_uid, type(exc).__name__, exc)

    return ResultStages(predictor=predictor, write_results=write, deliver=delivery.enqueue_files,
                        describe_object=describe, locate=locate,
                        supersede=supersede if settings.retention.supersede_results else None)
