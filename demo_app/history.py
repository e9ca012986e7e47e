"""Past captures, kept only on the device: one SQLite file plus the photos in the app's data folder.

Nothing here leaves the device on its own: ``export_csv`` writes a file the user asked for, and
``delete`` / ``clear`` remove the rows and their photos.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from PIL import Image

from edgederm.core.labels import full_name

from .presentation import ResultView

THUMBNAIL_SIZE = (160, 160)
CSV_COLUMNS = (
    "id",
    "created",
    "refer",
    "reason",
    "predicted",
    "predicted_name",
    "top1_label",
    "top1_name",
    "top1_probability",
    "top2_label",
    "top2_probability",
    "top3_label",
    "top3_probability",
    "lesion_area_fraction",
    "latency_ms",
    "model",
    "photo",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS captures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    photo TEXT NOT NULL,
    thumbnail TEXT NOT NULL,
    refer INTEGER NOT NULL,
    reason TEXT NOT NULL,
    top3 TEXT NOT NULL,
    lesion_area_fraction REAL,
    latency_ms REAL NOT NULL,
    model TEXT NOT NULL,
    predicted TEXT
)
"""


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    created: str  # local time, ISO 8601 with offset
    photo: Path
    thumbnail: Path
    refer: bool
    reason: str
    top3: list[dict]  # [{"label", "name", "probability"}], most probable first
    lesion_area_fraction: float | None
    latency_ms: float
    model: str
    predicted: str | None = None  # the class the model named under its decision rule; None in older histories

    @property
    def summary(self) -> str:
        """The same line as the result's ``ResultView.summary``: the named class, else (older entries) the top one."""
        named = self.predicted or self.top3[0]["label"]
        name = full_name(named)
        probability = next((row["probability"] for row in self.top3 if row["label"] == named), None)
        return f"{'REFER' if self.refer else 'no referral'} - {name}" + ("" if probability is None else f" {probability:.0%}")

    @property
    def when(self) -> str:
        return datetime.fromisoformat(self.created).strftime("%Y-%m-%d %H:%M")


class HistoryStore:
    """The history on disk. ``add`` writes at once; ``add_later`` writes on a background thread.

    ``add_later`` is what a capture uses, so the result is drawn without waiting for the JPEG
    encoding and the SQLite commit. Entries still waiting are written before anything reads the
    history (``list``, ``get``, ``export_csv``, ``delete``, ``clear``) and by ``flush``, which the app
    calls when it stops or pauses. The writer is not a daemon thread, so Python finishes the write
    before the process exits even when ``flush`` was never called.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.photos = self.folder / "photos"
        self.photos.mkdir(parents=True, exist_ok=True)
        self.db_path = self.folder / "history.sqlite"
        with self._connect() as db:
            db.execute(_SCHEMA)
            columns = {row["name"] for row in db.execute("PRAGMA table_info(captures)")}
            if "predicted" not in columns:  # a history written by an app that did not store the named class
                db.execute("ALTER TABLE captures ADD COLUMN predicted TEXT")
        self._pending: list[tuple] = []  # (shown, view, model, created), oldest first
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None  # a background write's failure, raised by the next flush

    def add(self, shown: Image.Image, view: ResultView, *, model: str) -> HistoryEntry:
        """Store the photo as shown (with its lesion outline, if any) and what the screen said."""
        self.flush()  # ids stay in capture order
        return self.get(self._write(shown, view, model, _now()))

    def add_later(self, shown: Image.Image, view: ResultView, *, model: str) -> None:
        """``add`` on a background thread: returns at once; ``flush`` waits for the write."""
        with self._lock:
            self._pending.append((shown, view, model, _now()))  # the time of the capture, not of the write
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_pending, name="history-writer")
                self._writer.start()

    @property
    def pending(self) -> int:
        """Entries queued by ``add_later`` and not yet on disk."""
        with self._lock:
            return len(self._pending)

    def flush(self) -> None:
        """Wait until every ``add_later`` entry is on disk; re-raises a background write's error."""
        with self._lock:
            writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join()
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def _write_pending(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._writer = None
                    return
                shown, view, model, created = self._pending[0]
            try:
                self._write(shown, view, model, created)
            except BaseException as exc:  # noqa: BLE001 - kept for flush: the UI thread reports it
                with self._lock:
                    self._error = self._error or exc
            with self._lock:
                self._pending.pop(0)  # dropped only once written (or failed): flush never misses it

    def _write(self, shown: Image.Image, view: ResultView, model: str, created: str) -> int:
        stem = uuid.uuid4().hex
        photo, thumbnail = self.photos / f"{stem}.jpg", self.photos / f"{stem}_thumb.jpg"
        if shown.mode != "RGB":
            shown = shown.convert("RGB")
        shown.save(photo, quality=90)
        small = shown.copy()
        small.thumbnail(THUMBNAIL_SIZE)
        small.save(thumbnail, quality=85)
        top3 = view.to_dict()["top3"]
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO captures (created, photo, thumbnail, refer, reason, top3, lesion_area_fraction, latency_ms, model, predicted)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    created,
                    photo.name,
                    thumbnail.name,
                    int(view.refer),
                    view.reason,
                    json.dumps(top3),
                    view.lesion_area_fraction,
                    view.latency_ms,
                    model,
                    view.predicted.label,
                ),
            )
            return int(cursor.lastrowid)

    def get(self, entry_id: int) -> HistoryEntry:
        self.flush()
        with self._connect() as db:
            row = db.execute("SELECT * FROM captures WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            raise KeyError(f"no capture {entry_id} in the history")
        return self._entry(row)

    def list(self) -> list[HistoryEntry]:
        """Newest first."""
        self.flush()
        with self._connect() as db:
            rows = db.execute("SELECT * FROM captures ORDER BY id DESC").fetchall()
        return [self._entry(row) for row in rows]

    def delete(self, entry_id: int) -> None:
        entry = self.get(entry_id)
        with self._connect() as db:
            db.execute("DELETE FROM captures WHERE id = ?", (entry_id,))
        entry.photo.unlink(missing_ok=True)
        entry.thumbnail.unlink(missing_ok=True)

    def clear(self) -> int:
        """Delete every capture and its photos; the number deleted."""
        entries = self.list()
        for entry in entries:
            self.delete(entry.id)
        return len(entries)

    def export_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            for entry in reversed(self.list()):  # oldest first, like a log
                writer.writerow(_csv_row(entry))
        return path

    def _connect(self) -> _Closing:
        db = sqlite3.connect(self.db_path)
        db.row_factory = sqlite3.Row
        return _Closing(db)

    def _entry(self, row: sqlite3.Row) -> HistoryEntry:
        return HistoryEntry(
            id=row["id"],
            created=row["created"],
            photo=self.photos / row["photo"],
            thumbnail=self.photos / row["thumbnail"],
            refer=bool(row["refer"]),
            reason=row["reason"],
            top3=json.loads(row["top3"]),
            lesion_area_fraction=row["lesion_area_fraction"],
            latency_ms=row["latency_ms"],
            model=row["model"],
            predicted=row["predicted"],
        )


class _Closing:
    """sqlite3's own context manager commits but never closes; this one does both."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.db.commit()
        finally:
            self.db.close()


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _csv_row(entry: HistoryEntry) -> list:
    top = entry.top3 + [{"label": "", "name": "", "probability": ""}] * (3 - len(entry.top3))
    area = "" if entry.lesion_area_fraction is None else f"{entry.lesion_area_fraction:.4f}"
    return [
        entry.id,
        entry.created,
        int(entry.refer),
        _text(entry.reason),
        entry.predicted or "",
        full_name(entry.predicted) if entry.predicted else "",
        top[0]["label"],
        _text(top[0]["name"]),
        _probability(top[0]["probability"]),
        top[1]["label"],
        _probability(top[1]["probability"]),
        top[2]["label"],
        _probability(top[2]["probability"]),
        area,
        f"{entry.latency_ms:.1f}",
        _text(entry.model),
        entry.photo.name,
    ]


def _text(value: str) -> str:
    """A cell a spreadsheet will not run as a formula (the model's file name is the user's choice)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _probability(value) -> str:
    return "" if value == "" else f"{float(value):.4f}"
