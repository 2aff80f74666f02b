"""Opening a database that other processes may be creating at the same moment.

Sweep workers started together against one fresh database (Optuna storage, MLflow tracking
store) each find no tables and each run the schema creation. On PostgreSQL all but one fail with a
duplicate-table error (``CREATE TABLE alembic_version``: unique violation on ``pg_type``), or see a
schema another process is still migrating; a moment later the schema is complete and opening
succeeds, so we open again, with back-off, for a bounded time. Connection errors and anything else
fail at once. SQLite files are worse: SQLite runs DDL outside transactions, so concurrent MLflow
migrations leave half-altered tables ("duplicate column name", "Online migration expected to
match one row") that no retry repairs. All SQLite users are on one machine, so there the opening
is serialized with a file lock keyed by the database's absolute path (in the temp directory: no
stray file beside the database).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
TIMEOUT_S = 120.0


def _is_schema_race(e: BaseException) -> bool:
    import sqlalchemy.exc

    if isinstance(e, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)):
        return True  # duplicate table / type / key while creating the schema
    if isinstance(e, sqlalchemy.exc.OperationalError) and "already exists" in str(e):
        return True  # SQLite: "table trials already exists"
    text = str(e).lower()
    return "schema" in text and any(w in text for w in ("out-of-date", "not up-to-date", "compatible", "migrat"))


@contextlib.contextmanager
def _sqlite_lock(url: str | None, timeout_s: float) -> Iterator[None]:
    """Held while a SQLite database is opened (and maybe created); nothing for other databases."""
    if not url or not url.startswith("sqlite:"):
        yield
        return
    import sqlalchemy.engine
    from filelock import FileLock

    database = sqlalchemy.engine.make_url(url).database
    if not database or database == ":memory:":
        yield
        return
    key = hashlib.sha256(os.path.realpath(database).encode()).hexdigest()[:16]
    with FileLock(os.path.join(tempfile.gettempdir(), f"ranking_exp-sqlite-{key}.lock"), timeout=timeout_s):
        yield


def open_shared(open_fn: Callable[[], T], what: str, url: str | None = None, timeout_s: float = TIMEOUT_S) -> T:
    """``open_fn()``, called again while it fails because another process is creating the schema.

    ``url`` is the database's SQLAlchemy URL: a SQLite file is opened under a file lock.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    with _sqlite_lock(url, timeout_s):
        while True:
            try:
                return open_fn()
            except Exception as e:
                cause = e.__cause__ or e.__context__
                if not (_is_schema_race(e) or (cause is not None and _is_schema_race(cause))):
                    raise
                if time.monotonic() > deadline:
                    raise
                log.info("%s: schema being created by another process (%s); opening again",
                         what, str(e).splitlines()[0][:200])
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 3.0)
