"""The Faust stream-processing side: topics, agents, tables and the worker wiring."""
