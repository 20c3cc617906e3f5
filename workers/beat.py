"""Beat's schedule: the rotation sweep, every ``TENANTKEYS_ROTATION_SWEEP_INTERVAL_SECONDS``.

Running two Beat processes by mistake is safe: the sweep holds a Redis lock and each rotation
is conditional on the version the sweep saw (see :mod:`tenantkeys.keys.rotation`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tenantkeys import jobs
from tenantkeys.config import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The ``beat_schedule`` setting of the app."""
    interval = settings.rotation_sweep_interval_seconds
    return {
        "rotation-sweep": {
            "task": jobs.ROTATION_SWEEP,
            "schedule": timedelta(seconds=interval),
            # A sweep that waited longer than one interval is superseded by the next one.
            "options": {"queue": jobs.MAINTENANCE_QUEUE, "expires": interval},
        }
    }
