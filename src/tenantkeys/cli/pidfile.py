"""The pid file of ``tenantkeys dev``: the processes and ports of the stack it runs.

One file per data dir, ``<data_dir>/dev.pid`` (JSON), written as each process starts and
removed when the stack has stopped. A PID alone does not say a process is still ours, since
the kernel reuses PIDs: each entry also keeps the process's start time, and it counts as
running only while both match.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tenantkeys.cli.probes import HAS_PROC, alive, start_time

FILE_NAME = "dev.pid"


@dataclass(frozen=True)
class RecordedProcess:
    """One process of the stack: its role, PID, start time and the ports it listens on."""

    name: str
    pid: int
    started: str | None
    ports: tuple[int, ...] = ()

    @classmethod
    def of(cls, name: str, pid: int, ports: Iterable[int] = ()) -> RecordedProcess:
        """Record process ``pid`` as it is now."""
        return cls(name, pid, start_time(pid), tuple(ports))

    def running(self) -> bool:
        """Whether this very process still runs (not exited, and its PID not reused)."""
        if HAS_PROC:
            return self.started is not None and start_time(self.pid) == self.started
        return alive(self.pid)

    def describe(self) -> str:
        """``worker pid 123 (port 9808)``."""
        ports = ", ".join(str(p) for p in self.ports)
        return f"{self.name} pid {self.pid}" + (f" (port {ports})" if ports else "")


@dataclass(frozen=True)
class PidFile:
    """``<data_dir>/dev.pid``."""

    path: Path

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> PidFile:
        """The pid file of the stack that keeps its data in ``data_dir``."""
        return cls(data_dir.resolve() / FILE_NAME)

    def read(self) -> list[RecordedProcess]:
        """The recorded processes, in start order; none if the file is missing or unreadable."""
        try:
            entries = json.loads(self.path.read_text())["processes"]
            return [
                RecordedProcess(
                    str(e["name"]),
                    int(e["pid"]),
                    None if e["started"] is None else str(e["started"]),
                    tuple(int(p) for p in e["ports"]),
                )
                for e in entries
            ]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def write(self, processes: Sequence[RecordedProcess]) -> None:
        """Replace the file (atomically: a reader sees the old list or the new one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            partial.write_text(json.dumps({"processes": [asdict(p) for p in processes]}, indent=1))
            os.replace(partial, self.path)
        except BaseException:  # a stop signal may land here too
            partial.unlink(missing_ok=True)
            raise

    def remove(self) -> None:
        """Delete the file, if it is there."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
