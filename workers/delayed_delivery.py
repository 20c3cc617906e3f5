"""RabbitMQ's delay queues for quorum queues, set up through the first node that answers.

On quorum queues a retry's delay waits in RabbitMQ (Celery's native delayed delivery, see
:func:`tenantkeys.queue.config.broker_countdown`). Celery's own consumer step
(``celery.worker.consumer.delayed_delivery:DelayedDelivery``) declares the delay exchanges and
queues through *every* URL of a failover list, retrying an unreachable node for about 15 s,
before the consumer takes a message: after one node of a cluster died, every reconnecting
worker waited that long (first job signed 19 s after the kill, measured). Exchanges, queues
and bindings belong to the whole cluster, so this step sets them up through the first node
that answers and tries each URL once. :class:`workers.consumer.DeadLetterConsumer` runs it in
place of Celery's (:data:`CELERY_STEP`).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from celery import bootsteps
from celery.utils.quorum_queues import detect_quorum_queues
from celery.worker.consumer.tasks import Tasks
from kombu.exceptions import OperationalError
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)
from kombu.utils.url import maybe_sanitize_url

log = logging.getLogger(__name__)

#: The consumer step this one replaces.
CELERY_STEP = "celery.worker.consumer.delayed_delivery:DelayedDelivery"
#: This step, as the consumer's blueprint names it.
STEP = f"{__name__}:DelayedDelivery"


class DelayedDelivery(bootsteps.StartStopStep):  # type: ignore[misc]
    """Declares the delay exchanges and queues and binds our queues to them, once per start."""

    requires = (Tasks,)

    def include_if(self, c: Any) -> bool:
        driver = c.app.connection_for_write().transport.driver_type
        return bool(detect_quorum_queues(c.app, driver)[0])

    def start(self, c: Any) -> None:
        app = c.app
        urls = [url for url in str(app.conf.broker_url).split(";") if url.strip()]
        # The node the consumer just reached first (a clone connects there), then each URL.
        candidates = [("the consumer's node", c.connection.clone)] + [
            (maybe_sanitize_url(url), partial(app.connection_for_write, url=url)) for url in urls
        ]
        for where, connect in candidates:
            try:
                with connect() as connection:
                    declare_native_delayed_delivery_exchanges_and_queues(
                        connection, app.conf.broker_native_delayed_delivery_queue_type
                    )
                    for queue in app.amqp.queues.values():
                        bind_queue_to_native_delayed_delivery_exchange(connection, queue)
                return
            except (OSError, OperationalError, *c.connection_errors) as exc:
                log.warning(
                    "delay queues not set up through %s (%s); trying the next node",
                    where,
                    type(exc).__name__,
                )
        # Retries then wait in the worker (ETA) until the next consumer restart sets this up.
        log.critical("delay queues not set up: no node of the broker URL answered")
