"""Recording received instances: a re-sent instance adds nothing, a conflicting one is kept apart.

A SOP Instance UID names one object. Received again with the same bytes it is a re-send: no
write, no row, no job. Received again with other bytes (another patient's image under a
reused UID, an edited copy) it is a conflict: the first file is never overwritten, the
second is stored beside it under its own name and recorded as a conflicting copy of the
first (in its own study), never processed, audited, and noted on the jobs of both studies.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, bindparam, insert, or_, select, update
from sqlalchemy.orm import Session, aliased

from storage.audit import AuditAction
from storage.audit import record as audit
from storage.files import (
    PRIVATE_FILE_MODE,
    PendingSync,
    _fsync_dir,
    make_private_dirs,
    sync_in_background,
    write_atomic,
)
from storage.models import Instance, Job, JobState, Study, utcnow
from storage.queue import ensure_waiting_job

#: Job.error_code of a job whose study holds (or lost) a conflicting copy; a warning.
UID_CONFLICT = "uid_conflict"
#: Job states whose notes nothing rewrites later; earlier ones get theirs when they finish.
_FINISHED = (JobState.EXPORTING, JobState.DONE, JobState.FAILED)


def _uid_hash(uid: str) -> str:
    """8 hex of sha256, as service.logs.uid_hash: what audit rows and notes name."""
    return hashlib.sha256(uid.encode()).hexdigest()[:8]


def content_sha256(data: bytes) -> str:
    """sha256 hex of an instance's bytes as received: its identity beside the SOP UID."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str | None:
    """sha256 hex of a stored file, or None when it cannot be read (rows from before 0003)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


@dataclass(frozen=True)
class ReceivedInstance:
    """The few header fields the SCP indexes; everything else stays in the file."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size_bytes: int
    calling_ae_title: str | None = None
    accession_number: str | None = None
    patient_name: str | None = None  # PN as received; shown on the dashboard, never logged
    skip_reason: str | None = None
    content_sha256: str | None = None  # None: hashed from the file at `path`

    def __post_init__(self) -> None:
        for name in ("study_instance_uid", "series_instance_uid", "sop_instance_uid"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty")


@dataclass(frozen=True)
class KnownCopies:
    """What the database holds for one SOP Instance UID, compared with received bytes."""

    same: Instance | None  # a row with exactly these bytes: a re-send
    original: Instance | None  # the UID's original row, whatever its bytes


_ANY_ROW_OF_UID = select(Instance.id).where(Instance.sop_instance_uid == bindparam("sop")).limit(1)


def known_copies(session: Session, sop_instance_uid: str, sha256: str | None) -> KnownCopies:
    """Find the row holding these bytes and the UID's original.

    Rows recorded before content hashes were kept (NULL) are hashed from their file now and
    the hash saved, so they are compared like any other. Bytes unknown (`sha256` None: a
    caller without the data or its file) cannot conflict: the original counts as the same.
    A UID never seen (the usual case) costs one indexed Core query, no ORM loading."""
    first = session.connection().execute(_ANY_ROW_OF_UID, {"sop": sop_instance_uid}).first()
    if first is None:
        return KnownCopies(None, None)
    rows = session.scalars(
        select(Instance).where(Instance.sop_instance_uid == sop_instance_uid).order_by(Instance.id)
    ).all()
    same = original = None
    for row in rows:
        if row.content_sha256 is None:
            row.content_sha256 = file_sha256(row.path)
        if row.content_sha256 == sha256 and same is None:
            same = row
        if row.conflict_of_id is None:
            original = row
    if sha256 is None:
        same = original
    return KnownCopies(same, original)


@dataclass(frozen=True)
class PlacedFile:
    """Where `start_place_file` put the bytes; durable once `wait()` returns."""

    path: Path
    pending: PendingSync | None = None  # None: durable already
    inode: tuple[int, int] | None = None  # (st_dev, st_ino) of the file this store linked

    def wait(self) -> None:
        """Block until the file and its directory entry are fsynced.

        An fsync that failed leaves bytes that may not survive a crash under the final name:
        the name this store linked is removed (never recorded, never acknowledged), and the
        OSError raised."""
        if self.pending is None:
            return
        try:
            self.pending.wait()
        except OSError:
            self._discard()
            raise

    def _discard(self) -> None:
        try:
            st = os.stat(self.path)
            if self.inode == (st.st_dev, st.st_ino):
                os.unlink(self.path)
        except OSError:
            pass


def place_file(canonical: Path, data: bytes, sha256: str, *, take_canonical: bool) -> Path:
    """Write `data` durably where it can never replace a file holding other bytes; return where.

    A UID's first content goes to `canonical` (`<sop>.dcm`); other content to
    `<sop>.sha256-<16 hex>.dcm` beside it, a name only these bytes can have (and no UID: the
    letters keep it apart from every `<sop>.dcm`). The canonical name is taken with a hard
    link, which fails rather than replaces, so of two different contents racing for it one
    keeps it and the other gets its own name. (write_atomic alone replaces: an acknowledged
    file overwritten by another patient's image.)
    """
    placed = start_place_file(canonical, data, sha256, take_canonical=take_canonical)
    placed.wait()
    return placed.path


def start_place_file(
    canonical: Path, data: bytes, sha256: str, *, take_canonical: bool
) -> PlacedFile:
    """`place_file`, returning while the usual case's fsyncs still run: call `.wait()`.

    The usual case is a UID's first content: written to a stage name, linked to `canonical`,
    the stage name removed, then the file and the directory fsynced together in the
    background, so the caller can prepare its database row meanwhile (the row must not be
    committed before `wait()`). A name already taken, and the rare paths, are synchronous.
    """
    own = canonical.with_name(f"{canonical.stem}.sha256-{sha256[:16]}.dcm")
    if not take_canonical:
        write_atomic(own, data)
        return PlacedFile(own)
    if file_sha256(canonical) == sha256:
        write_atomic(canonical, data)  # these bytes, left unrecorded (crash) or racing: re-fsync
        return PlacedFile(canonical)
    make_private_dirs(canonical.parent)
    stage = canonical.with_name(f".{canonical.name}.{uuid.uuid4().hex}.stage")
    fd = os.open(stage, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    try:
        _write_all(fd, data)
        os.link(stage, canonical)
        os.unlink(stage)
    except FileExistsError:  # taken meanwhile, or bytes left by a store never acknowledged
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            if file_sha256(canonical) == sha256:
                _fsync_file(canonical)  # the store that linked it may still be fsyncing
                placed = canonical
            else:
                os.replace(stage, own)
                placed = own
        finally:
            stage.unlink(missing_ok=True)
        _fsync_dir(canonical.parent)
        return PlacedFile(placed)
    except BaseException:
        os.close(fd)
        stage.unlink(missing_ok=True)
        raise
    st = os.fstat(fd)
    return PlacedFile(canonical, sync_in_background(fd, canonical.parent), (st.st_dev, st.st_ino))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _instance_columns(
    received: ReceivedInstance, study_id: int, sha256: str | None, now: datetime
) -> dict[str, object]:
    """The instance row's columns from what the listener read (both recording paths)."""
    return {
        "study_id": study_id,
        "series_instance_uid": received.series_instance_uid,
        "sop_instance_uid": received.sop_instance_uid,
        "sop_class_uid": received.sop_class_uid,
        "transfer_syntax_uid": received.transfer_syntax_uid,
        "path": received.path,
        "size_bytes": received.size_bytes,
        "calling_ae_title": received.calling_ae_title,
        "received_at": now,
        "skip_reason": received.skip_reason,
        "content_sha256": sha256,
    }


def record_instance(
    session: Session, received: ReceivedInstance, now: datetime | None = None
) -> tuple[Instance, bool]:
    """Insert the instance row, or count a re-send; return (row, created).

    A new processable instance puts its study's job in `waiting` (one waiting job per study).
    A re-send (same UID, same bytes) only bumps `times_received` and the study's
    `last_received_at` (a study being re-sent is not quiet: its waiting job must not start
    on a part of it), and never creates a job. The same UID with other bytes becomes a
    conflicting copy (`conflict_of_id`, `skip_reason`): never processed, audited, and noted
    on the finished jobs of both studies. Two racing inserts: the loser gets IntegrityError
    from the unique indexes, and the caller records again.
    """
    now = now or utcnow()
    sha256 = received.content_sha256 or file_sha256(received.path)
    # Writes first: on SQLite the checks below then run under the write lock. A known study
    # is touched and loaded by one UPDATE ... RETURNING (a SELECT and a flush cost twice).
    study = session.scalars(
        update(Study)
        .where(Study.study_instance_uid == received.study_instance_uid)
        .values(last_received_at=now)
        .returning(Study),
        execution_options={"synchronize_session": "fetch"},
    ).one_or_none()
    if study is None:
        study = Study(
            study_instance_uid=received.study_instance_uid,
            accession_number=received.accession_number,
            patient_name=received.patient_name,
            first_received_at=now,
            last_received_at=now,
        )
        session.add(study)
        session.flush()
    elif study.patient_name is None and received.patient_name:
        study.patient_name = received.patient_name
    known = known_copies(session, received.sop_instance_uid, sha256)
    if known.same is not None:
        known.same.times_received += 1
        known.same.received_at = now
        known.same.study.last_received_at = now
        session.flush()
        return known.same, False
    original = known.original
    row = Instance(
        **_instance_columns(received, study.id, sha256, now),
        conflict_of_id=original.id if original is not None else None,
    )
    if original is not None:
        sop = _uid_hash(received.sop_instance_uid)
        row.skip_reason = (
            f"{UID_CONFLICT}: SOP Instance UID already received with different content "
            f"(sop {sop}, first copy instance {original.id}); stored apart, not analysed"
        )
    session.add(row)
    session.flush()
    if original is not None:
        _record_conflict(session, row, original, now)
    elif received.skip_reason is None:
        ensure_waiting_job(session.connection(), study.id, now)
    return row, True


_TOUCH_STUDY = (
    update(Study)
    .where(Study.study_instance_uid == bindparam("uid"))
    .values(last_received_at=bindparam("now"))
    .returning(Study.id, Study.patient_name)
)


def uid_known(engine: Engine, sop_instance_uid: str) -> bool:
    """Whether any row holds this SOP Instance UID (one indexed read, no session)."""
    with engine.connect() as conn:
        return conn.execute(_ANY_ROW_OF_UID, {"sop": sop_instance_uid}).first() is not None


def record_new_instance(
    conn: Connection, received: ReceivedInstance, now: datetime | None = None
) -> int | None:
    """:func:`record_instance` for a SOP Instance UID never seen, in Core statements; the new
    row's id, or None when the UID turns out to be known (a concurrent store committed it
    first): the caller rolls back and records through :func:`record_instance`.

    The store of a new instance is the listener's hot path: the ORM's unit of work cost about
    as much CPU as everything else a store does. Same rows, same rules: the study is touched
    (or created), its waiting job found or created (locked, see ``ensure_waiting_job``), the
    UID checked under the write lock the study's UPDATE took on SQLite. Runs in the caller's
    transaction; IntegrityError (a racing insert) propagates like the ORM path's.
    """
    now = now or utcnow()
    sha256 = received.content_sha256 or file_sha256(received.path)
    touched = conn.execute(_TOUCH_STUDY, {"uid": received.study_instance_uid, "now": now}).first()
    if touched is None:
        study_id = conn.execute(
            insert(Study)
            .values(
                study_instance_uid=received.study_instance_uid,
                accession_number=received.accession_number,
                patient_name=received.patient_name,
                first_received_at=now,
                last_received_at=now,
            )
            .returning(Study.id)
        ).scalar_one()
    else:
        study_id = touched.id
        if touched.patient_name is None and received.patient_name:
            conn.execute(
                update(Study).where(Study.id == study_id).values(patient_name=received.patient_name)
            )
    if conn.execute(_ANY_ROW_OF_UID, {"sop": received.sop_instance_uid}).first() is not None:
        return None
    instance_id: int = conn.execute(
        insert(Instance)
        .values(**_instance_columns(received, study_id, sha256, now), times_received=1)
        .returning(Instance.id)
    ).scalar_one()
    if received.skip_reason is None:
        ensure_waiting_job(conn, study_id, now)
    return instance_id


def _record_conflict(session: Session, copy: Instance, original: Instance, now: datetime) -> None:
    """Audit the conflict and note it on the finished jobs of both studies (same transaction)."""
    ae = f" from AE '{copy.calling_ae_title}'" if copy.calling_ae_title else ""
    audit(
        session,
        AuditAction.UID_CONFLICT,
        actor=None,
        target=f"sop:{_uid_hash(copy.sop_instance_uid)}",
        detail=(
            f"received again with different content{ae}: kept as instance {copy.id} "
            f"(study {_uid_hash(copy.study.study_instance_uid)}), not processed; first copy "
            f"instance {original.id} (study {_uid_hash(original.study.study_instance_uid)}) "
            "unchanged"
        ),
        at=now,
    )
    jobs = session.scalars(
        select(Job).where(
            Job.study_id.in_({copy.study_id, original.study_id}), Job.state.in_(_FINISHED)
        )
    ).all()
    for job in jobs:
        note_conflicts(session, job)


def conflict_notes(session: Session, study_id: int) -> list[str]:
    """One line per conflicting copy touching the study: its own, or of its instances."""
    first = aliased(Instance)
    pairs = session.execute(
        select(Instance, first)
        .join(first, Instance.conflict_of_id == first.id)
        .where(or_(Instance.study_id == study_id, first.study_id == study_id))
        .order_by(Instance.id)
    ).all()
    notes = []
    for copy, original in pairs:
        sop = _uid_hash(copy.sop_instance_uid)
        if original.study_id == study_id:
            where = (
                "in this study"
                if copy.study_id == study_id
                else f"in study {_uid_hash(copy.study.study_instance_uid)}"
            )
            notes.append(
                f"instance {sop} has a conflicting copy with different content ({where}); "
                "that copy was not processed"
            )
        else:
            notes.append(
                f"instance {sop} was received here with content differing from its first copy "
                f"(study {_uid_hash(original.study.study_instance_uid)}); it was not processed"
            )
    return notes


def note_conflicts(session: Session, job: Job) -> bool:
    """Put the study's conflict notes first in `job.error`; True if any was added.

    The code becomes `uid_conflict` unless the job already carries a failure's code."""
    notes = [n for n in conflict_notes(session, job.study_id) if n not in (job.error or "")]
    if not notes:
        return False
    job.error = "; ".join([*notes, job.error] if job.error else notes)
    if job.error_code in (None, "images_skipped"):
        job.error_code = UID_CONFLICT
    session.flush()
    return True


def processable_instances(session: Session, study_id: int) -> list[Instance]:
    """The study's instances we run the models on, ordered by series then arrival."""
    return list(
        session.scalars(
            select(Instance)
            .where(Instance.study_id == study_id, Instance.skip_reason.is_(None))
            .order_by(Instance.series_instance_uid, Instance.id)
        )
    )
