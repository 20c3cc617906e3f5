"""Render the fault suite's JSON report as the Markdown table of docs/reliability.md.

    python -m tests.e2e.faults.report [REPORT.json]

Without an argument it reads ``$TK_FAULT_REPORT`` or ``$TMPDIR/tenantkeys-fault-report.json``,
where the suite writes at the end of each session.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

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
    from tests.e2e.faults.support import REPORT_PATH

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
