"""Jobs, unacked records and results as versions before the unprefixed Celery keys wrote them.

Those versions built their Celery apps from :func:`tenantkeys.queue.config.celery_config` plus
kombu's ``global_keyprefix`` (``<TENANTKEYS_REDIS_PREFIX>:``) on the broker and on the result
backend. :func:`old_client` is that app; :func:`take_and_die` is an old worker killed while it
held jobs (kombu's stock consumer, no ack, no restore).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from celery import Celery

from tenantkeys.client import SigningClient
from tenantkeys.config import Settings
from tenantkeys.queue.config import celery_config
from tenantkeys.queue.producer import Producer


def old_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings of the old versions: today's, with the key prefix back."""
    config = celery_config(settings)
    prefix = f"{settings.redis_prefix}:"
    config["broker_transport_options"] = {
        **config["broker_transport_options"],
        "global_keyprefix": prefix,
    }
    config["result_backend_transport_options"] = {
        **config["result_backend_transport_options"],
        "global_keyprefix": prefix,
    }
    return config


def old_client(settings: Settings) -> SigningClient:
    """A producer publishing (and storing results) exactly where the old versions did."""
    app = Celery("tenantkeys-old-client", set_as_current=False)
    app.conf.update(old_config(settings))
    return SigningClient(Producer(app, owns_app=True))


_TAKE = """
import json, os, sys
from kombu import Connection
config = json.loads(sys.argv[1])
with Connection(config["url"], transport_options=config["options"]) as conn:
    queue = conn.SimpleQueue(config["queue"])
    for _ in range(config["count"]):
        queue.get_nowait()  # recorded as unacked, never acked
    os._exit(0)  # killed: no restore on close
"""


def take_and_die(settings: Settings, queue: str, count: int) -> None:
    """An old worker takes ``count`` jobs of ``queue`` and dies holding them (unacked)."""
    config = old_config(settings)
    options = {
        k: v for k, v in config["broker_transport_options"].items() if k != "unacked_mutex_expire"
    }
    argument = json.dumps(
        {"url": settings.effective_broker_url, "options": options, "queue": queue, "count": count}
    )
    subprocess.run([sys.executable, "-c", _TAKE, argument], check=True, timeout=60)
