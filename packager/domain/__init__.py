"""The pure domain: events, request validation and cache keys, secrets, row writers, ZIP and DwC-A building,
email rendering.

No network here: no aiohttp, aiokafka, faust or SMTP. It imports `packager.core` and itself only; the I/O it
needs (a resolver, a CKAN page, a file) is handed in by the callers.
"""
