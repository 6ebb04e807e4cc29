"""Faust's Kafka transport with an idempotent producer.

faust-streaming turns on `enable_idempotence` only inside transactions (processing_guarantee
"exactly_once"). Without it, a produce request whose acknowledgement is lost (a broker killed after it stored
the batch) is retried by aiokafka and stored twice: the chaos campaign saw one terminal event appended twice
with the same event id. An idempotent producer gives each batch a sequence number the broker deduplicates.

Importing this module registers the transport under the URL scheme `packager`; `streams.app` uses
`packager://host:port` as the broker URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka

SCHEME = "packager"


class Producer(faust_aiokafka.Producer):
    """Faust's aiokafka producer, idempotent outside transactions too."""

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with the idempotent producer."""

    Producer: ClassVar[type[Producer]] = Producer


drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
