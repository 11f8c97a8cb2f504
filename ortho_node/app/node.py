"""Composition root: builds the node's parts from validated settings and runs them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from listeners.api.routes import Api, api_app, token_check
from listeners.console.routes import Console, console_app
from listeners.console.sessions import LoginThrottle
from listeners.dicomweb.routes import StowEndpoint, dicomweb_app, dicomweb_listener_app
from listeners.web.actions import OperatorActions
from listeners.web.listener import TlsFiles, WebListener
from listeners.web.operations import operations_app
from listeners.storescp import StorageSCP
from listeners.worker_pool import WorkerPool
from ortho_node import __version__
from ortho_node.clock import utcnow
from ortho_node.assembly.assembler import Assembler
from ortho_node.assembly.plan import AssemblyRules
from ortho_node.intake.associations import AssociationLog
from ortho_node.intake.catalog import Catalog
from ortho_node.audit.trail import AuditKind, AuditTrail
from ortho_node.config import ConfigError, Settings
from ortho_node.config.schema import ModelSettings
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
from ortho_node.scheduling.timers import SystemTime, TimeSource
from ortho_node.intake.recovery import Recovery
from ortho_node.intake.storage import InstanceStore, LocalInstanceStore, is_valid_uid
from ortho_node.app.checks import serves_own_dicomweb

if TYPE_CHECKING:  # torch is imported only by a node that runs the model
    from ortho_node.inference.batching import DeviceBatcher
from ortho_node.app.storage_worker import (
    run_storage_worker,
    run_stow_worker,
    server_ssl_context,
    storage_policy,
    stow_endpoint,
)
from ortho_node.cluster.heartbeat import Heartbeat
from ortho_node.cluster.lease import Lease
from ortho_node.cluster.registry import NodeIdentity, NodeRegistry
from ortho_node.cluster.roles import Role
from ortho_node.cluster.wakeup import Channel, Listener
from ortho_node.model.registry import ModelRegistry
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

    ``cluster.role`` picks the parts (``ortho_node.cluster``): a receiver runs the Storage SCP, the catalog and
    the completeness decisions; a processor claims jobs, runs the pipeline and delivers; ``all`` does both.
    Every process registers in the nodes table and beats; its heartbeat renews the leases of what it claimed.
    """

    def __init__(self, settings: Settings, *,
                 pipeline_factory: Callable[..., Pipeline] = Pipeline,
                 time: TimeSource | None = None, predictor: StudyPredictor | None = None,
                 store: InstanceStore | None = None) -> None:
        silence_identifier_sources()
        self.settings = settings
        self.role = Role(settings.cluster.role)
        self.lease = Lease.from_settings(settings.cluster, shared=settings.shared_database)
        self.engine = make_engine(settings.database_url, busy_timeout=settings.database.busy_timeout)
        self.session_factory = make_session_factory(self.engine)
        self.audit = AuditTrail(self.session_factory)
        self.store: InstanceStore = store or LocalInstanceStore(settings.data_dir, fsync=settings.storage.fsync)
        self.time = time or SystemTime()
        self.catalog = Catalog(self.engine, clock=self.time)
        accept = AcceptRules.from_settings(settings.accept)
        self.intake = Intake(self.store, self.catalog, self.audit, accept=accept)
        self.recovery = Recovery(settings.database_url, self.session_factory, self.store, self.catalog, self.audit,
                                 data_dir=settings.data_dir, accept=accept,
                                 shared_by=self.lease.node_id if self.lease.shared else None)
        self.assembler = Assembler(self.session_factory, self.store.local_path,
                                   AssemblyRules.from_settings(settings.assembly))
        self.delivery = DeliveryService(settings, self.session_factory, lease=self.lease)
        stages = (result_stages(settings, self.delivery, predictor, stored_instances(self.catalog, self.store),
                                self.session_factory)
                  if predictor is not None else None)
        self.pipeline = pipeline_factory(self.session_factory, **({"stages": stages} if stages else {}))
        self.scheduler = Scheduler(settings.scheduling, self.session_factory, self.assembler, self.pipeline,
                                   time=self.time, lease=self.lease, role=self.role)
        self.intake.add_listener(self.scheduler.watcher)
        self.purger = Purger(settings, self.session_factory, clock=self.scheduler.time, busy=self._receiving,
                             store=self.store)
        self.registry = NodeRegistry(self.session_factory, self.scheduler.time,
                                     missed_heartbeats=settings.cluster.missed_heartbeats)
        self.identity = NodeIdentity(self.lease.node_id, self.role, socket.gethostname(), os.getpid(), __version__,
                                     *model_facts(predictor))
        self._follow_model(predictor)
        renewals = [self.scheduler.queue.renew, self.delivery.queue.renew] if self.role.processes else []
        self.heartbeat = Heartbeat(self.registry, self.lease.node_id, settings.cluster.heartbeat_interval, renewals,
                                   on_lost=self._register)
        self.wakeups = (Listener(self.engine, {Channel.JOBS: self.scheduler.wake,
                                               Channel.DELIVERIES: self.delivery.worker.wake})
                        if self.lease.shared and self.role.processes else None)
        self.scp: StorageSCP | WorkerPool | None = None
        self.console: WebListener | None = None
        self.metrics: WebListener | None = None
        self.dicomweb: WebListener | WorkerPool | None = None
        self._registered = False  # the nodes row is ours (never mark another live process's row stopped)

    def prepare(self) -> None:
        """Bring the schema up to date and recover from an earlier crash; run before serving. Only receivers
        recover the archive (a processor never writes received instances)."""
        migrations.upgrade(self.engine)
        if self.role.receives:
            self.recovery.prepare()

    def start(self) -> StorageSCP | WorkerPool | None:
        """Register this process, start the scheduler (recovering interrupted jobs and timers), then the Storage
        SCP (receivers) and the delivery worker (processors); returns the Storage SCP, None for a processor."""
        self._register()
        self._forget_stopped_nodes()
        self.scheduler.start()
        self.heartbeat.start()
        if self.role.receives:  # the purger gives way to intake: it runs where instances arrive
            retention = self.settings.retention
            if retention.enabled or retention.supersede_results:  # off by default: nothing is deleted by age
                self.scheduler.time.every(PURGE_TIMER, retention.purge_interval, self.purge)
            self._start_scp()
        if self.role.processes:
            self.delivery.start()  # resumes whatever the queue held when the node last stopped
            if self.wakeups is not None:
                self.wakeups.start()
        self._start_operations()
        for warning in configuration_warnings(self.settings):
            log.warning("%s", warning)
        where = f" as {self.settings.dicom.ae_title} on port {self.scp.port}" if self.scp is not None else ""
        self.audit.record(AuditKind.NODE_STARTED, f"node {__version__} started{where} (role {self.role.value}, node "
                                                  f"{self.lease.node_id})",
                          details={"node": self.lease.node_id, "role": self.role.value})
        log.info("node %s started: role %s", self.lease.node_id, self.role.value)
        return self.scp

    def _register(self) -> None:
        self.registry.register(self.identity, heartbeat_interval=self.settings.cluster.heartbeat_interval,
                               sole=not self.lease.shared)
        self._registered = True

    def _forget_stopped_nodes(self) -> None:
        """Rows of processes stopped longer than ``cluster.forget_stopped_days`` go when a process starts (rolling
        restarts would otherwise pile them up); a failure only leaves them listed."""
        days = self.settings.cluster.forget_stopped_days
        if days:
            try:
                self.registry.forget_stopped(dt.timedelta(days=days))
            except SQLAlchemyError as exc:
                log.warning("stopped nodes not removed from the nodes table (%s)", type(exc).__name__)

    def _follow_model(self, predictor: StudyPredictor | None) -> None:
        """Keep this process's row naming the model it serves: a served model that follows the registry's
        activations (``ServedModel``) tells us when it switched, at the start of a study."""
        add_listener = getattr(predictor, "add_listener", None)
        if add_listener is None:  # a pinned model (model.path), a receiver, a test's stand-in: it never changes
            return

        def changed() -> None:
            version, gpu = model_facts(predictor)
            self.identity = dataclasses.replace(self.identity, model_version=version, gpu=gpu)  # a re-register too
            try:
                self.registry.model_changed(self.lease.node_id, version, gpu)
            except SQLAlchemyError as exc:  # the study goes on; the row names the old model until a restart
                log.error("node %s: the nodes table still names the previous model (%s)", self.lease.node_id,
                          type(exc).__name__)

        add_listener(changed)

    def _start_scp(self) -> None:
        dicom = self.settings.dicom
        processes = dicom.receiving_processes
        if processes > 1:
            self.scp = WorkerPool(self.settings, workers=processes, intake=self.intake, target=run_storage_worker,
                                  name=f"Storage SCP {dicom.ae_title}")
        else:
            self.scp = StorageSCP(self.settings, intake=self.intake,
                                  association_log=AssociationLog(self.session_factory),
                                  policy=storage_policy(self.settings, self.store),
                                  ssl_context=server_ssl_context(self.settings.tls))
        self.scp.start()

    def _start_operations(self) -> None:
        """The admin console and the metrics / health endpoint: ASGI applications served by uvicorn, each on its
        own port and thread when enabled (``listeners.web``)."""
        console, metrics = self.settings.console, self.settings.metrics
        throttle = LoginThrottle(console.max_failed_logins, console.lockout_minutes * 60)
        if console.enabled:
            actions = OperatorActions(self.session_factory, self.audit, reprocess=self.scheduler.reprocess,
                                      deliveries=self.delivery)
            admin = Console(console, self.session_factory, self.audit, warnings=configuration_warnings(self.settings),
                            destinations=self.settings.destinations, actions=actions, nodes=self.registry.nodes,
                            models=ModelRegistry.for_settings(self.settings, self.session_factory))
            throttle = admin.throttle  # basic authentication and console logins lock the same user names out
            api = api_app(Api(self.session_factory, self.settings.destinations, actions=actions,
                              nodes=self.registry.nodes), admin.session_actor,
                          version=__version__, tokens=token_check(self.session_factory),
                          stow=self._receives_stow)
            stow = None if serves_own_dicomweb(self.settings) else self._stow_endpoint(throttle)
            app = console_app(admin, api=api, dicomweb=dicomweb_app(stow) if stow is not None else None)
            tls = TlsFiles(console.tls_cert, console.tls_key) if console.tls else None
            self.console = WebListener(app, console.host, console.port, name="admin console", tls=tls)
            self.console.start()
        if serves_own_dicomweb(self.settings):
            self._start_dicomweb(throttle)
        if metrics.enabled:
            collector = NodeCollector(self.session_factory, self.settings.data_dir, self._min_free_bytes(),
                                      self.liveness(),
                                      nodes=lambda: [(n.role, n.state.value) for n in self.registry.nodes()])
            self.metrics = WebListener(operations_app(make_registry(collector), self.health), metrics.host,
                                       metrics.port, name="metrics and health check")
            self.metrics.start()

    @property
    def _receives_stow(self) -> bool:
        """STOW-RS through this node's intake, where it receives (``dicomweb.enabled``, not a processor)."""
        return self.settings.dicomweb.enabled and self.role.receives

    def _stow_endpoint(self, throttle: LoginThrottle) -> StowEndpoint | None:
        if not self._receives_stow:
            return None
        return stow_endpoint(self.settings, self.intake, self.audit, self.session_factory, self.store, throttle)

    def _start_dicomweb(self, throttle: LoginThrottle) -> None:
        dicomweb = self.settings.dicomweb
        if not self._receives_stow:
            return
        tls = TlsFiles(dicomweb.tls_cert, dicomweb.tls_key) if dicomweb.tls else None
        processes = dicomweb.serving_processes
        if processes > 1:  # each worker authenticates, stores and audits on its own (app.storage_worker)
            if tls is not None:
                tls.context()  # a bad file fails the start here, once, rather than in every worker
            self.dicomweb = WorkerPool(self.settings, workers=processes, intake=self.intake,
                                       target=run_stow_worker, address=(dicomweb.host, dicomweb.port),
                                       share_listener=True, name="DICOMweb")
        else:
            self.dicomweb = WebListener(dicomweb_listener_app(self._stow_endpoint(throttle)), dicomweb.host,
                                        dicomweb.port, name="DICOMweb", tls=tls)
        self.dicomweb.start()

    def _receiving(self) -> bool:
        return self.scp is not None and self.scp.active_associations > 0

    def purge(self) -> None:
        """One purge pass (the scheduled job): a failing pass is logged and the next one tries again."""
        try:
            self.purger.run()
        except (SQLAlchemyError, OSError) as exc:  # database away or a disk error: nothing was marked falsely
            log.error("purge pass failed: %s: %s", type(exc).__name__, exc)

    def liveness(self) -> Liveness:
        extra = {"heartbeat": lambda: self.heartbeat.running}
        if self.role.receives:
            extra["storage_scp"] = lambda: self.scp is not None
        delivery = (lambda: self.delivery.running) if self.role.processes else (lambda: None)
        return Liveness(scheduler=lambda: self.scheduler.running, delivery=delivery, extra=extra)

    def _min_free_bytes(self) -> int:
        return self.settings.storage.min_free_mb * 1024 * 1024

    def health(self) -> dict:
        """Database reachable, disk above the watermark, scheduler, delivery and Storage SCP running; and the
        configuration warnings (they do not make the node unhealthy)."""
        report = health(self.session_factory, self.settings.data_dir, self._min_free_bytes(), self.liveness())
        return {**report, "warnings": configuration_warnings(self.settings)}

    def stop(self) -> None:
        for server in (self.dicomweb, self.console, self.metrics):
            if server is not None:
                server.stop()
        self.dicomweb = self.console = self.metrics = None
        served = self.scp is not None
        if self.scp is not None:
            self.scp.stop()
            self.scp = None
            self.audit.record(AuditKind.NODE_STOPPED, "node stopped")
        if self.wakeups is not None:
            self.wakeups.stop()
        self.scheduler.stop()
        self.pipeline.close()
        self.delivery.stop()
        self.heartbeat.stop()
        if served:  # every association has ended: each stored file has its row
            self.recovery.leave_marker()
        self._deregister()
        self.engine.dispose()

    def _deregister(self) -> None:
        if not self._registered:
            return
        try:
            self.registry.stopped(self.lease.node_id)
        except SQLAlchemyError as exc:  # database away: the row goes stale and is flagged, as after a crash
            log.error("node %s not marked stopped (%s)", self.lease.node_id, type(exc).__name__)


def load_predictor(settings: Settings) -> StudyPredictor | None:
    """The model to serve, loaded once at start-up; None for a receive-only node. A set ``model.path`` pins that
    folder; otherwise the registry's active model (``ortho-node model activate``; the bundled model until one
    is), which the node checks at every study and reloads when it changed.

    Raises :class:`ConfigError` naming the key when the folder, its card or weights, or the device are
    unusable, so ``serve`` stops before it accepts a study it could not analyse.
    """
    model = settings.model
    if not Role(settings.cluster.role).processes:
        log.info("cluster.role is receive: studies are received and decided complete; processors analyse them")
        return None
    if not model.enabled:
        log.info("model.enabled is false: studies are received and assembled, not analysed")
        return None
    import torch  # only a node that runs the model pays for importing torch

    if model.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device: cuda was asked for, but no CUDA device is available")
    if model.threads:
        torch.set_num_threads(model.threads)
    if model.path:
        return _load_folder(settings.model_path, f"model.path ({settings.model_path})", model)
    from ortho_node.inference.served import ModelLoadError, ServedModel

    engine = make_engine(settings.database_url, busy_timeout=settings.database.busy_timeout)
    migrations.upgrade(engine)  # the registry's tables, and the audit trail its "model loaded" event goes to
    session_factory = make_session_factory(engine)
    registry = ModelRegistry.for_settings(settings, session_factory)
    try:
        return ServedModel(registry, lambda folder: _load_folder(folder, f"the active model ({folder})", model),
                           AuditTrail(session_factory))
    except ModelLoadError as exc:
        raise ConfigError(f"model.path (empty: {exc})") from None


def _load_folder(folder: Path, where: str, model: ModelSettings) -> DeviceBatcher:
    """The model in ``folder`` on ``model.device``, its device shared by the job threads (:class:`ConfigError`
    saying which part is unusable)."""
    import torch

    from ortho_node.inference.batching import DeviceBatcher
    from ortho_node.inference.predictor import Predictor
    from ortho_node.model.system import read_system_card

    if not folder.is_dir():
        raise ConfigError(f"{where}: folder does not exist")
    try:
        card = read_system_card(folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # CheckpointError and bad JSON are ValueErrors
        raise ConfigError(f"{where}: model card cannot be read: {exc}") from None
    try:
        predictor = Predictor.from_checkpoint(folder, model.device, window_batch=model.window_batch)
    except (OSError, ValueError, RuntimeError) as exc:  # missing or altered weights, tensors not matching the card
        raise ConfigError(f"{where}: model {card.name} {card.version} cannot be loaded: {exc}") from None
    log.info("model %s %s loaded from %s on %s (%d CPU threads, up to %d studies per device pass)", card.name,
             card.version, folder, predictor.device, torch.get_num_threads(), model.batch_studies)
    return DeviceBatcher(predictor, model.batch_studies)


def model_facts(predictor: StudyPredictor | None) -> tuple[str | None, str | None]:
    """(model card version, CUDA device name) of a loaded model, for the nodes table; (None, None) without
    one (a receiver, ``model.enabled = false``, a test's stand-in)."""
    if predictor is None:
        return None, None
    card, device = getattr(predictor, "card", None), getattr(predictor, "device", None)
    if card is None or device is None:
        return None, None
    gpu = None
    if device.type == "cuda":
        import torch

        gpu = torch.cuda.get_device_name(device)[:128]
    return card.version, gpu


def stored_instances(catalog: Catalog, store: InstanceStore) -> Locate:
    """SOP Instance UID -> its stored file, through the catalog: where the masks' slice references point."""

    def locate(sop_instance_uid: str) -> Path:
        relative = catalog.stored_path(sop_instance_uid)
        if relative is None:
            raise LookupError(f"instance {sop_instance_uid} is not stored")
        return store.local_path(relative)

    return locate


def result_stages(settings: Settings, delivery: DeliveryService, predictor: StudyPredictor,
                  locate: Locate, session_factory: sessionmaker[Session]) -> ResultStages:
    """The stages after assembly: ``predictor``, result objects built by ``reports`` and written under
    ``<data>/results/<study>/job-<id>``, then queued for every destination."""
    from ortho_node.app.result_builders import ResultBuilders

    builders = ResultBuilders(settings)

    def write(prediction: StudyPrediction, job_id: int | None) -> WrittenResults:
        uid = prediction.study_instance_uid
        if not is_valid_uid(uid):
            raise ValueError("prediction for an invalid Study Instance UID")
        return WrittenResults(*builders(prediction, results_folder(settings.data_dir, uid, job_id)))

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
                        supersede=supersede if settings.retention.supersede_results else None,
                        close=builders.close,
                        shadow=shadow_runner(settings, locate, session_factory) if settings.model.enabled else None)


def shadow_runner(settings: Settings, locate: Locate, session_factory: sessionmaker[Session]):
    """The shadow model beside the active one (``model.shadow`` or ``ortho-node model shadow``): each study's
    shadow result objects written under ``<data>/shadow`` by the same builder as the delivered ones, never
    queued. It asks the registry at every study, so a choice made while the node runs holds from its next one."""
    from reports.results import build_and_write

    from ortho_node.inference.shadow import ShadowRunner

    def write(prediction: StudyPrediction, folder: Path) -> list[Path]:
        if not is_valid_uid(prediction.study_instance_uid):
            raise ValueError("shadow prediction for an invalid Study Instance UID")
        return build_and_write(prediction, settings, folder)[0]

    return ShadowRunner(ModelRegistry.for_settings(settings, session_factory),
                        lambda folder: _load_folder(folder, f"the shadow model ({folder})", settings.model),
                        AuditTrail(session_factory), session_factory, settings.data_dir, write, locate)
