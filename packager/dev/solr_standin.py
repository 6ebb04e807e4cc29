"""A stand-in for Solr that is just enough for a real CKAN 2.12 to create datasets and resources.

CKAN indexes a dataset in Solr whenever it is created or changed (`package_create`, `resource_create`,
`datastore_create`), and checks Solr's schema version at start-up. The datastore API (`datastore_search`,
`/datastore/dump`) never reads Solr: it queries PostgreSQL directly. So this server accepts every update
(and forgets it), answers every select with no results, and serves a schema naming a CKAN version CKAN
supports. Dataset search (`package_search`) finds nothing against it, which no test of the packager needs.

Run: `python -m packager.dev.solr_standin --port N` (binds 127.0.0.1).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from aiohttp import web

SCHEMA_XML = '<?xml version="1.0" encoding="UTF-8"?>\n<schema name="ckan-2.12" version="1.6"/>\n'


async def _select(_request: web.Request) -> web.Response:
    return web.json_response(
        {"responseHeader": {"status": 0, "QTime": 0}, "response": {"numFound": 0, "start": 0, "docs": []}}
    )


async def _update(request: web.Request) -> web.Response:
    await request.read()  # accepted and forgotten
    return web.json_response({"responseHeader": {"status": 0, "QTime": 0}})


async def _schema(_request: web.Request) -> web.Response:
    return web.Response(text=SCHEMA_XML, content_type="application/xml")


def create_app() -> web.Application:
    """The stand-in's routes, under any core name (`/solr/<core>/...`)."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/solr/{core}/select{tail:.*}", _select)
    app.router.add_route("*", "/solr/{core}/update{tail:.*}", _update)
    app.router.add_get("/solr/{core}/schema{tail:.*}", _schema)
    app.router.add_get("/solr/{core}/admin/file{tail:.*}", _schema)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the stand-in on 127.0.0.1 until stopped."""
    parser = argparse.ArgumentParser(prog="python -m packager.dev.solr_standin")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    web.run_app(create_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
