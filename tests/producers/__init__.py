"""Producers written from the wire contract alone: raw Redis, raw AMQP (pika) and Node.

The Python producers are the runnable examples of docs/contract/examples/; the Node one is the
npm project in tests/producers/node/. None imports Celery, kombu or tenantkeys.
"""
