"""The labelling page's state: which image got which label, when, and the model's proposal, in a
small SQLite file next to the output, and the file operations that never lose an image.

* ``Store``: the queue (claims with a lease, so two tabs never get the same image), saving,
  skipping, marking unreadable and undoing, each a compare-and-set in one SQL transaction.

Two modes share it. ``label``: a source image is copied into the output folder as
``<label><ext>`` (``<label>_2<ext>``, ... when the text repeats) through a temporary file and
``os.replace``; the source is kept. ``review``: a labelled file is renamed in its own folder.
A file operation runs between two commits (``saving`` / ``undoing``), so a process killed
between them is put right by ``recover`` on the next start.
"""
from __future__ import annotations

import os
import random
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from captcha_recognize.labelling.files import (TMP_PREFIX, Conflict, Refused, copy_atomically, free_name, fsync_dir,
                                                label_problem)

LEASE_S = 600.0  # how long a claimed image stays reserved for the tab that holds it
MARKED = "marked on the page"  # the reason of an image marked unreadable by hand
SESSION_GAP_S = 300.0  # a pause this long starts a new run of labels for the labels-per-minute rate

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    mode TEXT NOT NULL,                   -- label: copy a source into the output; review: rename in place
    path TEXT NOT NULL,                   -- the image as found (absolute)
    present INTEGER NOT NULL DEFAULT 1,   -- found by the latest scan
    status TEXT NOT NULL DEFAULT 'todo',  -- todo, saving, labelled, undoing, unreadable
    reason TEXT,                          -- why it is unreadable
    named TEXT,                           -- review: the label its name had
    proposal TEXT, confidence REAL, order_key REAL NOT NULL DEFAULT 0,
    skipped_at REAL, claimed_by TEXT, claimed_until REAL,
    label TEXT, saved_as TEXT, accepted INTEGER, labelled_at REAL, labelled_by TEXT,
    UNIQUE (mode, path)
);
CREATE TABLE IF NOT EXISTS actions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    client TEXT NOT NULL, item INTEGER NOT NULL, kind TEXT NOT NULL,  -- label, skip, unreadable
    skipped_before REAL, at REAL NOT NULL, undone INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""
QUEUE_ORDER = "(skipped_at IS NOT NULL), skipped_at, order_key, id"  # skipped images come back last


@dataclass
class Row:
    """One image of the queue, as stored."""
    id: int
    mode: str
    path: Path
    status: str
    reason: str | None
    named: str | None
    proposal: str | None
    confidence: float | None
    skipped_at: float | None
    label: str | None
    saved_as: Path | None
    accepted: bool | None

    @property
    def current(self) -> Path:
        """Where the image's file is now (a reviewed file may have been renamed)."""
        return self.saved_as if self.mode == "review" and self.saved_as is not None else self.path


def _row(r: sqlite3.Row) -> Row:
    return Row(r["id"], r["mode"], Path(r["path"]), r["status"], r["reason"], r["named"], r["proposal"],
               r["confidence"], r["skipped_at"], r["label"], Path(r["saved_as"]) if r["saved_as"] else None,
               None if r["accepted"] is None else bool(r["accepted"]))


class Store:
    """The SQLite state of one output folder. Every method opens its own connection, so request
    threads (and other processes) can share the file; writes take SQLite's write lock first."""

    def __init__(self, db: str | os.PathLike, mode: str, out: str | os.PathLike, alphabet: str | None = None):
        if mode not in ("label", "review"):
            raise ValueError(f"mode must be 'label' or 'review', got {mode!r}")
        self.db, self.mode, self.out, self.alphabet = Path(db), mode, Path(out), alphabet
        self.db.parent.mkdir(parents=True, exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        with self._connect() as c:
            c.execute("PRAGMA journal_mode=WAL")
            c.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.db, timeout=30, isolation_level=None)  # explicit transactions only
        c.row_factory = sqlite3.Row
        c.execute("PRAGMA synchronous=FULL")
        return c

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction holding the write lock from its start (no two writers interleave)."""
        c = self._connect()
        try:
            c.execute("BEGIN IMMEDIATE")
            yield c
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        finally:
            c.close()

    def _read(self, sql: str, args: Sequence = ()) -> list[sqlite3.Row]:
        c = self._connect()
        try:
            return c.execute(sql, args).fetchall()
        finally:
            c.close()

    # ------------------------------------------------------------------ contents

    def scan(self, found: Sequence[Path], unreadable: Sequence[tuple[Path, str]] = ()) -> None:
        """Record the images of this scan (new ones get a random place in the queue); those not
        found are left out of the queue, and unreadable ones are listed with their reason."""
        rng = random.Random()
        with self._write() as c:
            c.execute("UPDATE items SET present = 0 WHERE mode = ?", (self.mode,))
            for path in found:
                c.execute("INSERT INTO items (mode, path, order_key) VALUES (?, ?, ?) ON CONFLICT (mode, path) "
                          "DO UPDATE SET present = 1, status = CASE WHEN status = 'unreadable' AND reason != ? "
                          "THEN 'todo' ELSE status END",  # a file that reads now is offered again
                          (self.mode, str(Path(path).resolve()), rng.random(), MARKED))
            for path, why in unreadable:
                c.execute("INSERT INTO items (mode, path, status, reason) VALUES (?, ?, 'unreadable', ?) "
                          "ON CONFLICT (mode, path) DO UPDATE SET present = 1, reason = excluded.reason, "
                          "status = CASE WHEN status = 'todo' THEN 'unreadable' ELSE status END",
                          (self.mode, str(Path(path).resolve()), why))

    def add_review(self, suspects: Sequence[dict]) -> None:
        """Queue cross-reading results (``path``, ``label``, ``prediction``, ``confidence``), the most
        confident disagreement first, in place of an earlier cross-reading's (reviewed ones stay reviewed)."""
        with self._write() as c:
            c.execute("UPDATE items SET present = 0 WHERE mode = 'review'")
            for r in suspects:
                c.execute("INSERT INTO items (mode, path, named, proposal, confidence, order_key) "
                          "VALUES ('review', ?, ?, ?, ?, ?) ON CONFLICT (mode, path) DO UPDATE SET present = 1, "
                          "named = excluded.named, proposal = excluded.proposal, confidence = excluded.confidence, "
                          "order_key = excluded.order_key WHERE status = 'todo'",
                          (str(Path(r["path"]).resolve()), r["label"], r["prediction"], r["confidence"],
                           -r["confidence"]))

    def size(self) -> int:
        """How many images this mode has recorded."""
        return self._read("SELECT COUNT(*) FROM items WHERE mode = ?", (self.mode,))[0][0]

    def set_proposals(self, readings: dict[int, tuple[str, float]]) -> None:
        """A model's reading of queued images; the least confident come first."""
        with self._write() as c:
            c.executemany("UPDATE items SET proposal = ?, confidence = ?, order_key = ? WHERE id = ?",
                          [(t, conf, conf, i) for i, (t, conf) in readings.items()])

    def todo(self) -> list[Row]:
        """The images still to label, in queue order."""
        return [_row(r) for r in self._read(f"SELECT * FROM items WHERE mode = ? AND present = 1 AND status = "
                                            f"'todo' ORDER BY {QUEUE_ORDER}", (self.mode,))]

    def item(self, item_id: int) -> Row:
        if not 0 <= item_id < 2 ** 63:  # SQLite's integers
            raise Conflict(f"no image {item_id}")
        rows = self._read("SELECT * FROM items WHERE id = ? AND mode = ?", (item_id, self.mode))
        if not rows:
            raise Conflict(f"no image {item_id}")
        return _row(rows[0])

    def meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as c:
            c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------------ the queue

    def claim(self, client: str, keep: Sequence[int] = (), n: int = 3) -> list[Row]:
        """Reserve images for ``client``: those of ``keep`` still to label, then the next unclaimed
        ones in queue order, ``n`` in all; its other claims are released."""
        now = time.time()
        free = "status = 'todo' AND present = 1 AND mode = ? AND (claimed_by IS NULL OR claimed_until < ?)"
        with self._write() as c:
            c.execute("UPDATE items SET claimed_by = NULL WHERE claimed_by = ? AND mode = ?", (client, self.mode))
            ids = [i for i in dict.fromkeys(keep)
                   if c.execute(f"SELECT 1 FROM items WHERE id = ? AND {free}", (i, self.mode, now)).fetchone()]
            more = c.execute(f"SELECT id FROM items WHERE {free} ORDER BY {QUEUE_ORDER} LIMIT ?",
                             (self.mode, now, n + len(ids))).fetchall()
            ids += [r["id"] for r in more if r["id"] not in ids][:max(0, n - len(ids))]
            c.executemany("UPDATE items SET claimed_by = ?, claimed_until = ? WHERE id = ?",
                          [(client, now + LEASE_S, i) for i in ids])
            rows = {r["id"]: _row(r) for r in c.execute(
                f"SELECT * FROM items WHERE id IN ({','.join('?' * len(ids))})", ids)}
        return [rows[i] for i in ids]

    def release(self, client: str) -> None:
        with self._write() as c:
            c.execute("UPDATE items SET claimed_by = NULL WHERE claimed_by = ?", (client,))

    def _take(self, c: sqlite3.Connection, client: str, item_id: int) -> Row:
        """Compare-and-set: the image is still to label and no other tab holds it."""
        if not 0 <= item_id < 2 ** 63:  # SQLite's integers
            raise Conflict(f"no image {item_id}")
        r = c.execute("SELECT * FROM items WHERE id = ? AND mode = ?", (item_id, self.mode)).fetchone()
        if r is None or r["status"] != "todo":
            raise Conflict("this image was already labelled (another tab?)" if r else f"no image {item_id}")
        if r["claimed_by"] not in (None, client) and r["claimed_until"] >= time.time():
            raise Conflict("another tab is showing this image")
        return _row(r)

    def _log(self, c: sqlite3.Connection, client: str, item_id: int, kind: str, skipped: float | None = None) -> None:
        c.execute("INSERT INTO actions (client, item, kind, skipped_before, at) VALUES (?, ?, ?, ?, ?)",
                  (client, item_id, kind, skipped, time.time()))

    def label(self, client: str, item_id: int, label: str, proposal: str | None = None) -> Row:
        """Save ``label`` for the image (the file first, then the state); returns the saved row."""
        problem = label_problem(label, self.alphabet)
        if problem:
            raise Refused(problem)
        with self._write() as c:
            row = self._take(c, client, item_id)
            if self.mode == "review" and label == row.named:
                dest = row.path  # the name was right: nothing to rename
            else:
                taken = {Path(r["saved_as"]).name for r in c.execute(
                    "SELECT saved_as FROM items WHERE status = 'saving' AND saved_as IS NOT NULL")}
                dest = free_name(row.path.parent if self.mode == "review" else self.out, label,
                                 row.path.suffix.lower(), taken)
            c.execute("UPDATE items SET status = 'saving', label = ?, saved_as = ?, claimed_by = ? WHERE id = ?",
                      (label, str(dest), client, item_id))
        try:
            self._place(row.path, dest)
        except BaseException as e:
            with self._write() as c:
                c.execute("UPDATE items SET status = 'todo', label = NULL, saved_as = NULL WHERE id = ?", (item_id,))
            if isinstance(e, FileNotFoundError) and not row.path.exists():
                raise Conflict(f"{row.path.name} is no longer in {row.path.parent}: nothing was saved") from None
            if isinstance(e, OSError):
                raise Conflict(f"cannot write {dest}: {e.strerror or e}; nothing was saved") from None
            raise
        shown = proposal if proposal is not None else row.proposal
        with self._write() as c:
            c.execute("UPDATE items SET status = 'labelled', accepted = ?, labelled_at = ?, labelled_by = ?, "
                      "proposal = COALESCE(?, proposal), claimed_by = NULL WHERE id = ?",
                      (None if shown is None else int(shown == label), time.time(), client, shown, item_id))
            self._log(c, client, item_id, "label")
        return self.item(item_id)

    def _place(self, src: Path, dest: Path) -> None:
        """Label mode: copy into the output. Review mode: rename (a no-op when the name stays)."""
        if self.mode == "label":
            copy_atomically(src, dest)
        elif src != dest:
            os.replace(src, dest)
            fsync_dir(dest.parent)

    def skip(self, client: str, item_id: int) -> None:
        """Put the image at the back of the queue."""
        with self._write() as c:
            row = self._take(c, client, item_id)
            c.execute("UPDATE items SET skipped_at = ?, claimed_by = NULL WHERE id = ?", (time.time(), item_id))
            self._log(c, client, item_id, "skip", row.skipped_at)

    def mark_unreadable(self, client: str, item_id: int) -> None:
        """Take the image out of the queue as unreadable to a human (its file is left alone)."""
        with self._write() as c:
            self._take(c, client, item_id)
            c.execute("UPDATE items SET status = 'unreadable', reason = ?, claimed_by = NULL WHERE id = ?",
                      (MARKED, item_id))
            self._log(c, client, item_id, "unreadable")

    def undo(self, client: str) -> tuple[Row, str | None] | None:
        """Undo ``client``'s latest action not undone yet: a saved file is removed (label mode)
        or renamed back (review). Returns the image, claimed again, and the label it had."""
        with self._write() as c:
            a = c.execute("SELECT * FROM actions WHERE client = ? AND undone = 0 ORDER BY seq DESC LIMIT 1",
                          (client,)).fetchone()
            if a is None:
                return None
            row = _row(c.execute("SELECT * FROM items WHERE id = ?", (a["item"],)).fetchone())
            c.execute("UPDATE actions SET undone = 1 WHERE seq = ?", (a["seq"],))
            claim = (client, time.time() + LEASE_S, row.id)
            if a["kind"] == "skip":
                c.execute("UPDATE items SET skipped_at = ?, claimed_by = ?, claimed_until = ? WHERE id = ?",
                          (a["skipped_before"], *claim))
                return self._reread(c, row.id), None
            if a["kind"] == "unreadable":
                c.execute("UPDATE items SET status = 'todo', reason = NULL, claimed_by = ?, claimed_until = ? "
                          "WHERE id = ?", claim)
                return self._reread(c, row.id), None
            self._check_undoable(row)
            c.execute("UPDATE items SET status = 'undoing' WHERE id = ?", (row.id,))
        self._unplace(row)
        with self._write() as c:
            c.execute("UPDATE items SET status = 'todo', label = NULL, saved_as = NULL, accepted = NULL, "
                      "labelled_at = NULL, labelled_by = NULL, claimed_by = ?, claimed_until = ? WHERE id = ?", claim)
            return self._reread(c, row.id), row.label

    @staticmethod
    def _reread(c: sqlite3.Connection, item_id: int) -> Row:
        return _row(c.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone())

    def _check_undoable(self, row: Row) -> None:
        """Undo may not lose an image: a copy is removed only while it equals its source, and a
        renamed file goes back only to a free name."""
        if row.status != "labelled" or row.saved_as is None:
            raise Conflict(f"{row.path.name} is no longer labelled; nothing to undo")
        dest = row.saved_as
        if self.mode == "label" and dest.exists():
            if not row.path.exists() or row.path.read_bytes() != dest.read_bytes():
                raise Conflict(f"{dest.name} differs from its source {row.path.name} now; not undone")
        if self.mode == "review" and dest != row.path and row.path.exists():
            raise Conflict(f"{row.path.name} exists again; {dest.name} not renamed back")

    def _unplace(self, row: Row) -> None:
        if self.mode == "label":
            row.saved_as.unlink(missing_ok=True)
        elif row.saved_as != row.path and row.saved_as.exists():
            os.replace(row.saved_as, row.path)
        fsync_dir(row.saved_as.parent)

    def recover(self) -> int:
        """After a crash: finish or roll back the file operations that were under way (a file that
        reached its place counts as saved), and remove left-over temporary files."""
        fixed = 0
        with self._write() as c:
            for r in c.execute("SELECT * FROM items WHERE mode = ? AND status IN ('saving', 'undoing')",
                               (self.mode,)).fetchall():
                done = r["saved_as"] is not None and Path(r["saved_as"]).exists()
                c.execute("UPDATE items SET status = ?, labelled_at = COALESCE(labelled_at, ?), saved_as = ? "
                          "WHERE id = ?", ("labelled" if done else "todo", time.time(),
                                           r["saved_as"] if done else None, r["id"]))
                fixed += 1
        for tmp in self.out.glob(f"{TMP_PREFIX}*.tmp"):
            tmp.unlink(missing_ok=True)
        return fixed

    # ------------------------------------------------------------------ what the page shows

    def stats(self) -> dict:
        """Counts, labels per minute (the latest 30 labels without a long pause) and how often the
        proposal was kept."""
        c = self._connect()
        try:
            q = lambda sql: c.execute(sql, (self.mode,)).fetchone()[0]  # noqa: E731
            times = [r[0] for r in c.execute("SELECT labelled_at FROM items WHERE mode = ? AND status = 'labelled' "
                                             "ORDER BY labelled_at DESC LIMIT 30", (self.mode,))]
            run = times[:1]  # newest first, back to the first long pause
            for t in times[1:]:
                if run[-1] - t >= SESSION_GAP_S:
                    break
                run.append(t)
            span = run[0] - run[-1] if len(run) > 1 else 0
            return {
                "labelled": q("SELECT COUNT(*) FROM items WHERE mode = ? AND status = 'labelled'"),
                "remaining": q("SELECT COUNT(*) FROM items WHERE mode = ? AND status = 'todo' AND present = 1"),
                "unreadable": q("SELECT COUNT(*) FROM items WHERE mode = ? AND status = 'unreadable' AND present = 1"),
                "renamed": q("SELECT COUNT(*) FROM items WHERE mode = ? AND mode = 'review' AND status = 'labelled' "
                           "AND saved_as != path"),
                "accepted": q("SELECT COALESCE(SUM(accepted), 0) FROM items WHERE mode = ? AND status = 'labelled'"),
                "with_proposal": q("SELECT COUNT(accepted) FROM items WHERE mode = ? AND status = 'labelled'"),
                "per_minute": round(60 * (len(run) - 1) / span, 1) if span > 0 else None,
            }
        finally:
            c.close()

    def unreadable(self) -> list[tuple[str, str]]:
        """``(file name, reason)`` of the images left out as unreadable."""
        return [(Path(r["path"]).name, r["reason"] or "") for r in self._read(
            "SELECT path, reason FROM items WHERE mode = ? AND status = 'unreadable' AND present = 1 ORDER BY path",
            (self.mode,))]
