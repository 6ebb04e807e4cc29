"""Development helpers, never imported by the service: a local Kafka broker without Docker, a mail sink, a
CKAN-compatible `datastore_search` server over synthetic tables, a real CKAN 2.12 and PostgreSQL."""
