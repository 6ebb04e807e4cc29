"""JSON Schemas of the events, generated from their dataclasses: one file per event type and version.

    python -m packager.domain.schemas [DIR]     (re)writes DIR/<Type>.v<version>.json (default: schemas/)

The files are committed (`schemas/`) for downstream consumers; a unit test keeps them equal to what this
module generates, and an integration test validates every event the running service emits against them.
Analytics records (see `projections.analytics`) share the envelope, with `requester` in place of `email`.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import orjson

from packager.domain.events import EVENT_TYPES, RFC3339_PATTERN, Event

SCHEMA_DIRECTORY = Path(__file__).resolve().parents[2] / "schemas"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _json_type(hint: Any) -> dict[str, Any]:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [_json_type(a) for a in get_args(hint)]
        return {"anyOf": options}
    if hint is type(None):
        return {"type": "null"}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if hint is str:
        return {"type": "string"}
    if origin is dict or hint is dict:
        return {"type": "object"}
    if origin is list or hint is list:
        return {"type": "array"}
    raise TypeError(f"no JSON type for {hint!r}")


def schema_for(cls: type[Event]) -> dict[str, Any]:
    """The JSON Schema of a whole envelope carrying `cls` at its current version."""
    hints = get_type_hints(cls)
    payload_fields = [f.name for f in dataclasses.fields(cls)]
    return {
        "$schema": DIALECT,
        "$id": f"https://ckanpackager.invalid/schemas/{cls.TYPE}.v{cls.VERSION}.json",
        "title": f"{cls.TYPE} v{cls.VERSION}",
        "description": (cls.__doc__ or "").strip().splitlines()[0],
        "type": "object",
        "required": ["event_id", "type", "schema_version", "job_id", "occurred_at", "payload"],
        "additionalProperties": False,
        "properties": {
            "event_id": {"type": "string", "minLength": 1},
            "type": {"const": cls.TYPE},
            "schema_version": {"const": cls.VERSION},
            "job_id": {"type": "string", "minLength": 1},
            "occurred_at": {"type": "string", "format": "date-time", "pattern": RFC3339_PATTERN},
            "payload": {
                "type": "object",
                "required": payload_fields,
                "additionalProperties": False,
                "properties": {name: _json_type(hints[name]) for name in payload_fields},
            },
        },
    }


def all_schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema, for every event type."""
    return {f"{cls.TYPE}.v{cls.VERSION}.json": schema_for(cls) for cls in EVENT_TYPES.values()}


def write(directory: Path = SCHEMA_DIRECTORY) -> list[Path]:
    """Write every schema file; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in all_schemas().items():
        path = directory / name
        path.write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2) + b"\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_DIRECTORY):
        print(path)
