"""Development helpers: a local Kafka broker without Docker, and a local mail sink."""
