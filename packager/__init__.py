"""ckanpackager: CKAN resources packaged into ZIPs, requested over HTTP and built from an event log.

The subpackages follow the flow (docs/architecture.md draws it and says which way imports go):
`core` (errors, settings, logs), `domain` (pure: events, validation, writers, DwC-A, emails), `adapters`
(Kafka, CKAN, URL fetch, SMTP, store, read side), `service` (packaging one job), `http` (the ingress),
`cli` (the commands) and `dev` (local stand-ins for development and tests). The Faust agents live in
`streams`, the folds of the log in `projections`.
"""

__version__ = "0.1.0"
