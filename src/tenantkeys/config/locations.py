"""Where one deployment keeps its state: the data dir, and the key store and keys inside it.

The one-key-store rule (README, "Where the keys live"): every command of one deployment must
find the same store, wherever it runs from. So the data dir is, in order:

1. ``TENANTKEYS_DATA_DIR``, when set;
2. the first ``.tenantkeys`` directory found from the working directory upward (as git finds
   ``.git``), so a command run from a subdirectory of the checkout finds the checkout's store;
3. otherwise ``.tenantkeys`` in the working directory, created by the first command that
   writes (``keys create``, ``dev``, a worker), never by one that only reads.

The key store (SQLite), the local master key and the dead-letter key default to files in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DIR_NAME = ".tenantkeys"
STORE_FILE = "keys.db"
MASTER_KEY_FILE = "master.key"
DEAD_LETTER_KEY_FILE = "deadletter.key"


@dataclass(frozen=True)
class DataDirSearch:
    """What the upward search found from ``start``: the data dir, or where a new one goes."""

    start: Path
    found: Path | None

    @property
    def data_dir(self) -> Path:
        return self.found if self.found is not None else self.start / DIR_NAME

    def explain(self) -> str:
        """One clause saying how the data dir was chosen, for messages and ``config check``."""
        if self.found is not None:
            return f"the first {DIR_NAME} directory found from {self.start} upward"
        return f"no {DIR_NAME} directory in {self.start} or any parent"


def search_data_dir(start: Path | None = None) -> DataDirSearch:
    """The first ``.tenantkeys`` directory from ``start`` (the working directory) upward."""
    origin = (start or Path.cwd()).resolve()
    for directory in (origin, *origin.parents):
        candidate = directory / DIR_NAME
        if candidate.is_dir():
            return DataDirSearch(origin, candidate)
    return DataDirSearch(origin, None)


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file (absolute: four slashes)."""
    return f"sqlite:///{path}"


def sqlite_path(database_url: str) -> Path | None:
    """The file of a SQLite URL; None for another database or an in-memory one."""
    scheme, _, rest = database_url.partition("://")
    if scheme.partition("+")[0] != "sqlite":
        return None
    path = rest.removeprefix("/").partition("?")[0]
    return Path(path) if path and path != ":memory:" else None
