"""The tenantkeys benchmark harness: ``tenantkeys bench`` or ``python -m bench``.

Scenarios are numbered as in docs/performance.md. In-process scenarios (1, 2, 5-9, 11) need only the
library and the loopback KMS servers; the Celery scenarios (3, 4, 10 and the worker side of
11) start real workers on Redis (database 8, a private prefix) and RabbitMQ (a private vhost).
"""
