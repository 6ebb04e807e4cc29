"""The store contract, run once against each store: the folder (the default) and s3proxy, a real
S3-compatible server (started once per session by `packager dev s3`).

What a requester and an operator rely on, whichever store holds the ZIPs: a package appears whole or not at
all, reads back byte for byte (any range of it), is never overwritten by another build, and is listed,
removed and looked up the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import obstore
import pytest

from packager.adapters.s3_store import S3Store
from packager.adapters.store import COPY_CHUNK, FolderStore, Store, remove_stale, zip_one_file

PART = 5 * 1024 * 1024  # S3's smallest part: an upload of 12 MiB takes three


@pytest.fixture(params=["folder", "s3proxy"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "folder":
        return FolderStore(tmp_path / "store", tmp_path / "store" / ".partial")
    server = request.getfixturevalue("s3proxy_server")
    return S3Store(
        server.bucket,
        f"contract-{uuid.uuid4().hex[:12]}",  # a prefix of its own: tests never see each other's objects
        tmp_path / "partial",
        endpoint_url=server.endpoint,
        access_key_id=server.access_key_id,
        secret_access_key=server.secret_access_key,
        part_size=PART,
        presign_time=60,
    )


def partial_with(store: Store, data: bytes, job: str = "job") -> Path:
    path = store.partial_path(f"{job}.{uuid.uuid4().hex[:6]}", ".zip.partial")
    path.write_bytes(data)
    return path


async def read_all(store: Store, name: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in store.read(name, start, end)])


async def test_a_zip64_package_is_published_whole_and_reads_back_byte_for_byte(
    store: Store, tmp_path: Path
) -> None:
    source = tmp_path / "rows.csv"
    source.write_bytes(b"id,name\n" + b"".join(b"%d,row %d\n" % (i, i) for i in range(200_000)))
    partial = store.partial_path("job-1", ".zip.partial")
    zip_one_file(source, "rows.csv", partial)  # entries written with ZIP64 extra fields
    built = partial.read_bytes()
    assert await store.listing() == []

    published = await store.publish(partial, "job-1.zip")

    assert not partial.exists()
    assert published.name.startswith("job-1") and published.name.endswith(".zip")
    assert published.size == len(built) and published.sha256 == hashlib.sha256(built).hexdigest()
    found = await store.stat(published.name)
    assert found is not None and found.size == len(built)
    back = await read_all(store, published.name)
    assert back == built
    with zipfile.ZipFile(io.BytesIO(back)) as zf:
        assert zf.testzip() is None
        assert zf.read("rows.csv") == source.read_bytes()


async def test_any_byte_range_reads_back_exactly(store: Store) -> None:
    data = os.urandom(3 * COPY_CHUNK + 123)
    published = await store.publish(partial_with(store, data), "ranges.zip")
    size = len(data)
    for start, end in [
        (0, 10),
        (100, 100 + COPY_CHUNK + 5),  # across a chunk boundary
        (size - 7, None),
        (COPY_CHUNK, 2 * COPY_CHUNK),
        (0, None),
    ]:
        assert await read_all(store, published.name, start, end) == data[start:end], (start, end)
    assert await read_all(store, published.name, 50, 50) == b""


async def test_a_package_larger_than_a_part_uploads_in_parts_and_reads_back(store: Store) -> None:
    data = os.urandom(12 * 1024 * 1024)  # random bytes: as large in the ZIP as on disk
    published = await store.publish(partial_with(store, data), "parts.zip")
    assert await read_all(store, published.name) == data
    if isinstance(store, S3Store):
        meta = await obstore.head_async(store.client, published.name)
        # S3 gives a multipart object the ETag "<md5 of the parts' md5s>-<number of parts>".
        assert str(meta["e_tag"]).strip('"').endswith("-3")


async def test_two_publications_under_one_name_never_overwrite_each_other(store: Store) -> None:
    first = await store.publish(partial_with(store, b"first build"), "job-2.zip")
    try:
        second = await store.publish(partial_with(store, b"second build"), "job-2.zip")
    except FileExistsError:  # the folder refuses; the build then picks a name of its own
        second = None
    if second is not None:
        assert second.name != first.name
        assert await read_all(store, second.name) == b"second build"
    assert await read_all(store, first.name) == b"first build"


async def test_removal_listing_and_lookups(store: Store) -> None:
    before = time.time()
    a = await store.publish(partial_with(store, b"a" * 10), "a.zip")
    b = await store.publish(partial_with(store, b"b" * 20), "b.zip")
    after = time.time()

    listed = {f.name: f for f in await store.listing()}
    assert set(listed) == {a.name, b.name}
    assert listed[a.name].size == 10 and listed[b.name].size == 20
    # S3 keeps last-modified to the second: the age the janitor and /downloads go by.
    assert all(before - 2 <= f.modified <= after + 2 for f in listed.values())

    await store.remove(a.name)
    await store.remove(a.name)  # already gone: nothing to do, no error
    assert await store.stat(a.name) is None
    assert [f.name for f in await store.listing()] == [b.name]
    with pytest.raises(FileNotFoundError):
        await read_all(store, a.name)
    assert await store.stat("never-published.zip") is None


async def test_the_stale_sweep_removes_only_zips_past_the_age_given(store: Store) -> None:
    old = await store.publish(partial_with(store, b"old"), "old.zip")
    await store.publish(partial_with(store, b"not a package"), "notes.txt")
    later = time.time() + 3600

    assert await remove_stale(store, max_age=7200, now=later) == []  # an hour old: kept
    assert await remove_stale(store, max_age=1800, now=later) == [old.name]
    assert {f.name.rsplit(".", 1)[1] for f in await store.listing()} == {"txt"}  # not a ZIP: left alone


async def test_an_upload_cut_short_leaves_nothing_visible(s3proxy_server: Any, tmp_path: Path) -> None:
    """S3 only: the partial file is a pipe that stops after two parts' worth; the upload is cancelled."""
    store = S3Store(
        s3proxy_server.bucket,
        f"cut-{uuid.uuid4().hex[:12]}",
        tmp_path / "partial",
        endpoint_url=s3proxy_server.endpoint,
        access_key_id=s3proxy_server.access_key_id,
        secret_access_key=s3proxy_server.secret_access_key,
        part_size=PART,
    )
    pipe = store.partial_path("job-cut", ".zip.partial")
    os.mkfifo(pipe)
    publishing = asyncio.create_task(store.publish(pipe, "job-cut.zip"))
    writer = await asyncio.to_thread(open, pipe, "wb")
    try:
        await asyncio.to_thread(writer.write, os.urandom(2 * PART + 1000))
        await asyncio.to_thread(writer.flush)
        # Parts are on their way or uploaded; the object must not exist under any name yet.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert await store.listing() == []
            await asyncio.sleep(0.5)
        publishing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await publishing
    finally:
        writer.close()
    assert await store.listing() == []


async def test_a_presigned_link_serves_the_object_with_ranges(s3proxy_server: Any, tmp_path: Path) -> None:
    store = S3Store(
        s3proxy_server.bucket,
        f"signed-{uuid.uuid4().hex[:12]}",
        tmp_path / "partial",
        endpoint_url=s3proxy_server.endpoint,
        access_key_id=s3proxy_server.access_key_id,
        secret_access_key=s3proxy_server.secret_access_key,
        presign_time=60,
    )
    data = os.urandom(100_000)
    published = await store.publish(partial_with(store, data), "signed.zip")
    url = await store.download_url(published.name)
    assert url is not None and "X-Amz-Signature=" in url
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Range": "bytes=1000-1999"}) as resp:
            assert resp.status == 206 and await resp.read() == data[1000:2000]
        async with http.get(url.replace("X-Amz-Signature=", "X-Amz-Signature=0")) as resp:
            assert resp.status == 403  # a tampered link opens nothing
    assert await FolderStore(tmp_path / "f", tmp_path / "f" / ".p").download_url("x.zip") is None
