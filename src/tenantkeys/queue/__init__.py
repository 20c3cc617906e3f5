"""The Celery boundary of the library.

Only this package (and ``workers/``) imports celery or kombu: the shared Celery settings
(:mod:`.config`), the producer's app and result backend (:mod:`.producer`), message signing
(:mod:`.message_signing`) and the broker probe (:mod:`.broker`). Everything below it speaks
the job contract (:mod:`tenantkeys.jobs.contract`), not Celery.
"""
