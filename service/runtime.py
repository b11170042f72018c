"""The running service: one object holding what every part shares, and the start/stop order.

`wecare serve` = migrations → re-queue orphans → DICOM listener → stability, workers and
exporter threads → web app; SIGTERM/Ctrl-C sets one stop event and each loop finishes the
unit in hand.

The same parts run as separate processes (`wecare listener | worker | exporter | web`, see
:data:`ROLES`), several of each where it makes sense, sharing the database (PostgreSQL) and the
data directory: the listener writes `incoming/`, workers read it and write `outputs/`, the
exporter and the web app read both. Job and outbox claims are safe across processes
(storage.queue, storage.outbox); migrations run under a PostgreSQL advisory lock so processes
starting together do not race on a fresh database.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Engine, text

from service.config import Settings
from service.exporter import run_exporter
from service.ingest import StoreContext
from service.logs import setup_logging
from service.scp import start_scp
from service.stability import run_stability
from service.tls import server_context
from storage.db import make_engine, session_scope, upgrade
from storage.files import DataDir
from storage.queue import requeue_expired, requeue_orphans

if TYPE_CHECKING:
    # service.worker pulls in torch and the model code (seconds, hundreds of MB): imported
    # only by the processes that run workers, not by a listener, exporter or web process.
    from service.web.deps import RuntimeView
    from service.worker import ModelProvider

log = logging.getLogger(__name__)

# Any fixed 64-bit key: processes of one installation serialise their migrations on it.
MIGRATION_LOCK_KEY = 0x57454341_52450001


@dataclass(frozen=True)
class Role:
    """Which parts one process runs: `serve` runs them all, the others one each."""

    name: str
    listener: bool = False  # DICOM listener and the stability loop (quiet time = listening)
    workers: bool = False
    exporter: bool = False
    web: bool = False


ROLES: dict[str, Role] = {
    "serve": Role("serve", listener=True, workers=True, exporter=True, web=True),
    "listener": Role("listener", listener=True),
    "worker": Role("worker", workers=True),
    "exporter": Role("exporter", exporter=True),
    "web": Role("web", web=True),
}


@dataclass
class Runtime:
    """Shared state of one service process; the web app reads it for /health."""

    settings: Settings
    engine: Engine
    data_dir: DataDir
    models: ModelProvider | None
    stop: threading.Event = field(default_factory=threading.Event)
    scp_server: Any = None
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def listener_up(self) -> bool:
        server = self.scp_server
        return (
            server is not None
            and getattr(server, "socket", None) is not None
            and server.socket.fileno() != -1
        )


def build_runtime(settings: Settings, *, with_models: bool = True) -> Runtime:
    """Create the data directory, migrate the database, and build the shared objects.

    Without `with_models` (a listener, exporter or web process) torch is never imported.
    """
    data_dir = DataDir(settings.storage.data_dir, settings.storage.min_free_mb * 1024 * 1024)
    data_dir.create()
    url = settings.storage.resolved_database_url()
    migrate(url)
    engine = make_engine(url)
    models = None
    if with_models:
        from service.worker import ModelProvider

        models = ModelProvider(
            settings.worker.weights,
            settings.worker.device,
            settings.worker.torch_threads,
            precision=settings.worker.precision,
            compile_mode=settings.worker.compile,
            scope_check=settings.worker.scope_check,
        )
        from dicom_io.seg import load_standard_tables

        load_standard_tables()  # not in the first study's time
    return Runtime(settings=settings, engine=engine, data_dir=data_dir, models=models)


def migrate(url: str) -> None:
    """Upgrade the database to the newest migration; on PostgreSQL one process at a time.

    A listener, a web app and N workers started together on an empty database would otherwise
    each create the tables, and all but one fail.
    """
    if not url.startswith("postgresql"):
        upgrade(url)
        return
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            conn.commit()
            try:
                upgrade(url)
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                conn.commit()
    finally:
        engine.dispose()


def worker_id_prefix(role: str) -> str:
    """Prefix of this process's worker ids (`claimed_by`), also used to find its orphans.

    `serve` (one per host by design) owns every `<host>:serve-` claim: an earlier `serve`
    killed on this host left them. A `worker` process owns only claims with its own pid: its
    siblings on the host are alive, and a restarted container (same hostname, same pid) finds
    its earlier life's claims at once; any other dead worker's jobs return when their lease
    expires.
    """
    node = f"{socket.gethostname()}:"  # service.worker.node_id(), without importing torch
    if role == "serve":
        return f"{node}serve-"
    return f"{node}{role}-{os.getpid()}-"


def start_background(
    runtime: Runtime,
    *,
    scp: bool = True,
    workers: bool = True,
    exporter: bool = True,
    stability: bool = True,
    role: str = "serve",
) -> None:
    """Start the listener and the loops (each a daemon thread watching runtime.stop).

    `stability` queues quiet studies and re-queues expired leases; a process without it but
    with workers runs a lease reaper instead, so a killed worker's job comes back even when no
    listener runs.
    """
    s = runtime.settings
    prefix = worker_id_prefix(role)
    if workers or role == "serve":
        with session_scope(runtime.engine) as session:
            orphans = requeue_orphans(session, prefix)
        if orphans:
            log.warning("re-queued %d job(s) left running by an earlier process", len(orphans))
    if scp:
        runtime.scp_server = start_scp(
            StoreContext(
                runtime.data_dir,
                runtime.engine,
                s.dicom.max_inflated_mb * 1024 * 1024,
                s.routing.rules(),
            ),
            ae_title=s.dicom.ae_title,
            host=s.dicom.host,
            port=s.dicom.port,
            network_timeout_seconds=s.dicom.network_timeout_seconds,
            max_pdu_bytes=s.dicom.max_pdu_bytes,
            require_called_ae_title=s.dicom.require_called_ae_title,
            max_associations=s.dicom.max_associations,
            max_connections_per_address=s.dicom.max_connections_per_address,
            association_setup_timeout_seconds=s.dicom.association_setup_timeout_seconds,
            allowed_peers=s.dicom.allowed_peers,
            ssl_context=_listener_tls(s),
        )
    loops: list[tuple[str, Any, tuple[Any, ...]]] = []
    if stability:
        loops.append(
            ("stability", run_stability, (runtime.engine, s.study.stable_seconds, runtime.stop))
        )
    elif workers and s.worker.count:
        reap_seconds = min(max(s.worker.lease_seconds / 4, 0.5), 30.0)
        loops.append(
            ("lease-reaper", run_lease_reaper, (runtime.engine, reap_seconds, runtime.stop))
        )
    if workers and s.worker.count:
        from service.worker import run_worker

        if runtime.models is None:
            raise ValueError("workers need a runtime built with_models")
        loops.append(("model-preload", _preload_model, (runtime.models,)))
        for n in range(s.worker.count):
            loops.append(
                (
                    f"worker-{n}",
                    run_worker,
                    (
                        s,
                        runtime.engine,
                        runtime.data_dir,
                        runtime.models,
                        runtime.stop,
                        f"{prefix}{n}",
                    ),
                )
            )
    if exporter:
        loops.append(("exporter", run_exporter, (s, runtime.engine, runtime.stop)))
    for name, target, args in loops:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        runtime.threads.append(thread)


def _listener_tls(settings: Settings) -> ssl.SSLContext | None:
    tls = settings.dicom.tls
    if not tls.enabled or tls.cert_file is None or tls.key_file is None:
        return None
    return server_context(tls.cert_file, tls.key_file, tls.ca_file, tls.require_client_cert)


def run_lease_reaper(engine: Engine, interval_seconds: float, stop: threading.Event) -> None:
    """Return jobs whose worker stopped renewing its lease (killed, frozen) to the queue."""
    while not stop.wait(interval_seconds):
        try:
            with session_scope(engine) as session:
                requeued = requeue_expired(session)
            for job_id in requeued:
                log.warning("job %d re-queued: its worker's lease expired", job_id)
        except Exception:
            log.exception("lease check failed")


def _preload_model(models: ModelProvider) -> None:
    """Load the model at start so the first study does not wait for it and /health says so."""
    try:
        models.get()
    except Exception:  # noqa: BLE001 - the error is kept on the provider and shown on /health
        log.error("model could not be loaded at start: %s", models.error)


def stop_background(runtime: Runtime, timeout: float = 30.0) -> None:
    """Stop accepting, let each loop finish the unit in hand, close the database."""
    runtime.stop.set()
    if runtime.scp_server is not None:
        runtime.scp_server.shutdown()
        runtime.scp_server = None
    for thread in runtime.threads:
        thread.join(timeout)
    runtime.engine.dispose()


def serve(settings: Settings) -> None:
    """Run everything in this process until SIGTERM or Ctrl-C."""
    run_role(settings, "serve")


def run_role(settings: Settings, role: str) -> None:
    """Run the parts of `role` (a key of :data:`ROLES`) until SIGTERM or Ctrl-C.

    The loops finish the unit in hand (a C-STORE, a job, a destination's batch) before the
    process exits; a worker is given up to its lease to finish its job.
    """
    parts = ROLES[role]
    setup_logging(
        settings.log.level,
        settings.log.json_format,
        settings.storage.data_dir / "logs" if settings.log.to_file else None,
    )
    runtime = build_runtime(settings, with_models=parts.workers)
    start_background(
        runtime,
        scp=parts.listener,
        workers=parts.workers,
        exporter=parts.exporter,
        stability=parts.listener,
        role=role,
    )
    log.info("running as %s", role)

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        runtime.stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    web_server = None
    if parts.web and (settings.web.enabled or role == "web"):
        import uvicorn

        from service.web.app import create_app, server_config

        # Alone, the web app has no model or listener of its own to report on /health.
        view = cast("RuntimeView", runtime) if role == "serve" else None
        app = create_app(settings, view)
        web_server = uvicorn.Server(server_config(app, settings))
        web_thread = threading.Thread(target=web_server.run, name="web", daemon=True)
        web_thread.start()
        log.info("dashboard on http://%s:%d/", settings.web.host, settings.web.port)
    try:
        while not runtime.stop.wait(0.5):
            pass
    finally:
        if web_server is not None:
            web_server.should_exit = True
        stop_background(
            runtime, timeout=max(30.0, settings.worker.lease_seconds) if parts.workers else 30.0
        )
        log.info("stopped")
