"""The running service: one object holding what every part shares, and the start/stop order.

`wecare serve` = migrations → re-queue orphans → DICOM listener → stability, workers and
exporter threads → web app; SIGTERM/Ctrl-C sets one stop event and each loop finishes the
unit in hand.
"""

from __future__ import annotations

import logging
import signal
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from service.config import Settings
from service.exporter import run_exporter
from service.ingest import StoreContext
from service.logs import setup_logging
from service.scp import start_scp
from service.stability import run_stability
from service.tls import server_context
from service.worker import ModelProvider, node_id, run_worker
from storage.db import make_engine, session_scope, upgrade
from storage.files import DataDir
from storage.queue import requeue_orphans

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Shared state of one service process; the web app reads it for /health."""

    settings: Settings
    engine: Engine
    data_dir: DataDir
    models: ModelProvider
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


def build_runtime(settings: Settings) -> Runtime:
    """Create the data directory, migrate the database, and build the shared objects."""
    data_dir = DataDir(settings.storage.data_dir, settings.storage.min_free_mb * 1024 * 1024)
    data_dir.create()
    url = settings.storage.resolved_database_url()
    upgrade(url)
    engine = make_engine(url)
    models = ModelProvider(
        settings.worker.weights,
        settings.worker.device,
        settings.worker.torch_threads,
        precision=settings.worker.precision,
        compile_mode=settings.worker.compile,
    )
    return Runtime(settings=settings, engine=engine, data_dir=data_dir, models=models)


def start_background(
    runtime: Runtime, *, scp: bool = True, workers: bool = True, exporter: bool = True
) -> None:
    """Start the listener and the loops (each a daemon thread watching runtime.stop)."""
    s = runtime.settings
    with session_scope(runtime.engine) as session:
        orphans = requeue_orphans(session, node_id())
    if orphans:
        log.warning("re-queued %d job(s) left running by an earlier process", len(orphans))
    if scp:
        runtime.scp_server = start_scp(
            StoreContext(runtime.data_dir, runtime.engine, s.dicom.max_inflated_mb * 1024 * 1024),
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
    loops: list[tuple[str, Any, tuple[Any, ...]]] = [
        ("stability", run_stability, (runtime.engine, s.study.stable_seconds, runtime.stop)),
    ]
    if workers and s.worker.count:
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
                        f"{node_id()}{n}",
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
    setup_logging(
        settings.log.level,
        settings.log.json_format,
        settings.storage.data_dir / "logs" if settings.log.to_file else None,
    )
    runtime = build_runtime(settings)
    start_background(runtime)

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        runtime.stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    web_server = None
    if settings.web.enabled:
        import uvicorn

        from service.web.app import create_app, server_config

        web_server = uvicorn.Server(server_config(create_app(settings, runtime), settings))
        web_thread = threading.Thread(target=web_server.run, name="web", daemon=True)
        web_thread.start()
        log.info("dashboard on http://%s:%d/", settings.web.host, settings.web.port)
    try:
        while not runtime.stop.wait(0.5):
            pass
    finally:
        if web_server is not None:
            web_server.should_exit = True
        stop_background(runtime)
        log.info("stopped")
