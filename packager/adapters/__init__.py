"""Adapters: the service's edges to the outside world, each taking its clients and settings as arguments.

The Kafka log, the CKAN `datastore_search` client, URL downloads and the outgoing HTTP client, SMTP, the file
store, DNS resolution, Prometheus metrics, and the read side that folds the log into the read model.
"""
