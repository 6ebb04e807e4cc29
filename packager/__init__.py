"""ckanpackager's domain: request validation, cache keys, events, the packaging pipeline and email rendering.

Pure modules here never import faust or aiokafka; I/O lives in the adapter modules (`kafka_log`, `fetch`,
`store`, `smtp`) that take their clients as arguments.
"""

__version__ = "0.1.0"
