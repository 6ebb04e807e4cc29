"""The chaos campaign's checker reads the S3 store's ZIPs as stored: each object named in the events is
copied through the service's S3 client (`S3Store.read`), byte for byte, and a missing one stays missing, so
`zip_ok` fails for it ("ZIP missing from the store") as it does with the folder store."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from benchmarks.chaos_check import check_zip
from benchmarks.chaos_store import BUCKET_PREFIX, CampaignStore
from packager.adapters.s3_store import S3Store
from packager.domain.events import PackageCompleted


async def test_the_named_objects_are_copied_whole_and_a_missing_one_is_not(
    s3proxy_server: Any, tmp_path: Path
) -> None:
    store = S3Store(
        s3proxy_server.bucket,
        BUCKET_PREFIX,
        tmp_path / "worker",
        endpoint_url=s3proxy_server.endpoint,
        access_key_id=s3proxy_server.access_key_id,
        secret_access_key=s3proxy_server.secret_access_key,
        part_size=5 * 1024 * 1024,
    )
    data = uuid.uuid4().bytes * 400_000  # 6.4 MB: two parts, so the copy streams more than one chunk
    partial = store.partial_path("job", ".zip")
    partial.write_bytes(data)
    published = await store.publish(partial, "job.zip")

    campaign = CampaignStore("s3", tmp_path / "campaign", print)
    campaign.server = s3proxy_server  # the session's server stands in for the one a campaign starts
    folder = await campaign.readable_copy([published.name, "never-published.zip", published.name])

    assert (folder / published.name).read_bytes() == data
    assert sorted(p.name for p in folder.iterdir()) == [published.name]  # no partial copy left beside it
    event = PackageCompleted("ck", "r", "a@example.org", "h", "", "fast", "x.zip", 1, "0" * 64, 1, "a", "b")
    assert check_zip(folder / "never-published.zip", event) == (None, "ZIP missing from the store")
