"""The fault suite's report: one :class:`FaultRecord` per fault, merged into a JSON file at the
end of each session and rendered as the Markdown table of docs/reliability.md.

    python -m tests.e2e.faults.report [REPORT.json]

Without an argument it reads ``$TK_FAULT_REPORT`` or ``$TMPDIR/tenantkeys-fault-report.json``,
where the suite writes at the end of each session.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Where the per-fault records go; ``python -m tests.e2e.faults.report`` renders them.
REPORT_PATH = Path(
    os.environ.get("TK_FAULT_REPORT", "")
    or Path(os.environ.get("TMPDIR", "/tmp")) / "tenantkeys-fault-report.json"
)


@dataclass
class FaultRecord:
    """One row of the table in docs/reliability.md."""

    fault: str
    broker: str
    provider: str
    fault_seconds: float = 0.0
    jobs_sent: int = 0
    signed: int = 0
    rejected: int = 0
    retried: int = 0
    dead_lettered: int = 0
    replayed: int = 0
    resent: int = 0
    lost: int = 0
    duplicated: int = 0
    recover_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_records(
    records: Iterable[FaultRecord],
    path: Path = REPORT_PATH,
    *,
    scans: Iterable[Mapping[str, int]] = (),
) -> Path:
    """Merge ``records`` into the JSON report (one row per fault name and broker)."""
    existing: dict[str, dict[str, Any]] = {}
    old_scans: list[Any] = []
    if path.exists():
        with suppress(ValueError):
            previous = json.loads(path.read_text())
            for row in previous.get("faults", []):
                existing[f"{row['fault']}|{row['broker']}"] = row
            old_scans = previous.get("secret_scans", [])
    for record in records:
        existing[f"{record.fault}|{record.broker}"] = record.to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    body: dict[str, Any] = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    body["faults"] = sorted(existing.values(), key=lambda r: (r["fault"], r["broker"]))
    body["secret_scans"] = list(scans) or old_scans
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


COLUMNS = (
    ("fault", "fault"),
    ("broker", "broker"),
    ("provider", "KMS"),
    ("fault_seconds", "fault (s)"),
    ("jobs_sent", "sent"),
    ("signed", "signed"),
    ("rejected", "rejected"),
    ("retried", "retried"),
    ("dead_lettered", "dead-lettered"),
    ("replayed", "replayed"),
    ("resent", "re-sent"),
    ("lost", "lost"),
    ("duplicated", "duplicated"),
    ("recover_seconds", "recover (s)"),
)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def render(rows: Iterable[Mapping[str, Any]]) -> str:
    """A Markdown table, one row per fault, plus a totals row."""
    rows = list(rows)
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(name)) for name, _ in COLUMNS) + " |")
    totals = {
        name: sum(int(r.get(name) or 0) for r in rows)
        for name in (
            "jobs_sent",
            "signed",
            "rejected",
            "retried",
            "dead_lettered",
            "replayed",
            "resent",
            "lost",
            "duplicated",
        )
    }
    lines.append(
        "| **total** | | | | "
        + " | ".join(f"**{totals[name]}**" for name, _ in COLUMNS[4:-1])
        + " | |"
    )
    notes = [
        f"- {row['fault']} ({row['broker']}): {n}" for row in rows for n in row.get("notes", [])
    ]
    return "\n".join(lines + (["", *notes] if notes else []))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else REPORT_PATH
    body = json.loads(path.read_text())
    print(render(body["faults"]))
    scans = body.get("secret_scans") or []
    if scans:
        print(
            f"\nsecret scans: {len(scans)}, {sum(s['key_secrets'] for s in scans)} key secrets "
            f"and {sum(s['payloads'] for s in scans)} payloads searched in "
            f"{sum(s['places'] for s in scans)} places "
            f"({sum(s['bytes_scanned'] for s in scans)} bytes); leaks: "
            f"{sum(s['leaks'] for s in scans)}"
        )
    print(f"\n(generated {body.get('generated_at')}, from {path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
