"""Opening a database that other processes may be creating at the same moment.

Sweep workers started together against one fresh PostgreSQL database (Optuna storage, MLflow
tracking store) each find no tables and each run the schema creation; all but one fail with a
duplicate-table error (``CREATE TABLE alembic_version``: unique violation on ``pg_type``), or see
a schema another process is still migrating. A moment later the schema is complete and opening
succeeds, so we open again, with back-off, for a bounded time. Connection errors and anything
else fail at once.
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
TIMEOUT_S = 120.0


def _is_schema_race(e: BaseException) -> bool:
    import sqlalchemy.exc

    if isinstance(e, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)):
        return True  # duplicate table / type / key while creating the schema
    text = str(e).lower()
    return "schema" in text and any(w in text for w in ("out-of-date", "not up-to-date", "compatible", "migrat"))


def open_shared(open_fn: Callable[[], T], what: str, timeout_s: float = TIMEOUT_S) -> T:
    """``open_fn()``, called again while it fails because another process is creating the schema."""
    deadline = time.monotonic() + timeout_s
    delay = 0.2
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
