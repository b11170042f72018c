"""Dependencies shared by the routes, as `Annotated` aliases to keep signatures short."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Protocol

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from service.config import Settings
from storage.db import session_scope
from storage.files import DataDir


class ModelView(Protocol):
    """What /health reads of service.worker.ModelProvider."""

    @property
    def loaded(self) -> bool: ...

    @property
    def error(self) -> str | None: ...


class RuntimeView(Protocol):
    """What the web app reads of service.runtime.Runtime (not imported: it pulls in the
    DICOM listener and the workers, which the web app never touches)."""

    models: ModelView

    @property
    def listener_up(self) -> bool: ...


def get_session(request: Request) -> Iterator[Session]:
    """One session per request: committed when the route returns, rolled back if it raises."""
    with session_scope(request.app.state.engine) as session:
        yield session


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_runtime(request: Request) -> RuntimeView | None:
    """The running service (listener, model), or None when the web app runs on its own."""
    return request.app.state.runtime  # type: ignore[no-any-return]


def get_data_dir(request: Request) -> DataDir:
    return request.app.state.data_dir  # type: ignore[no-any-return]


def get_engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


# scope="function": the commit happens before the response is sent, so a client that sees
# 200 after an action sees its effect on the next request.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RuntimeDep = Annotated[RuntimeView | None, Depends(get_runtime)]
DataDirDep = Annotated[DataDir, Depends(get_data_dir)]
EngineDep = Annotated[Engine, Depends(get_engine)]
