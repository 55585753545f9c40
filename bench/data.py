"""What the data cache costs over a plain boto3 download.

Puts a 200 MiB dataset into the S3 of `scripts/bootstrap data` (once: s3://mad-data/
bench-200m/, 4 objects of 40 MiB and 40 of 1 MiB), then, in the same run and in turns,
times a cold DataCache.ensure with fetch_s3 against plain boto3 `download_file` of the
same objects one after another. Prints the median seconds and MiB/s of each and the ratio
(cache / plain; below 1 is faster).

    python bench/data.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config

from pytest_madengine.data.fetch import DataCache, cache_key, fetch_s3

CREDENTIALS = Path("/var/lib/pytest-madengine/data/credential.json")
BUCKET, PREFIX = "mad-data", "bench-200m/"
SIZES = {f"big-{i}.bin": 40 << 20 for i in range(4)} | {
    f"small/part-{i:02d}.bin": 1 << 20 for i in range(40)
}


def s3_client(login: dict[str, str]):
    return boto3.client(
        "s3", endpoint_url=login["MINIO_ENDPOINT"], region_name="us-east-1",
        aws_access_key_id=login["USERNAME"], aws_secret_access_key=login["PASSWORD"],
        config=Config(s3={"addressing_style": "path"}),
    )  # fmt: skip


def make_dataset(client) -> None:
    """The objects, put only when the bucket lacks them (or holds other sizes)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX)
    have = {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}
    missing = [name for name, size in SIZES.items() if have.get(PREFIX + name) != size]
    if missing:
        print(f"bench: putting {len(missing)} objects into s3://{BUCKET}/{PREFIX}")
    for name in missing:
        client.put_object(Bucket=BUCKET, Key=PREFIX + name, Body=os.urandom(SIZES[name]))


def plain(client, dest: Path) -> float:
    start = time.perf_counter()
    for name in SIZES:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(BUCKET, PREFIX + name, str(target))
    return time.perf_counter() - start


def cached(login: dict[str, str], root: Path) -> float:
    url = f"s3://{BUCKET}/{PREFIX}"
    start = time.perf_counter()
    DataCache(root).ensure(
        cache_key("minio", login["MINIO_ENDPOINT"], url),
        lambda dest: fetch_s3(url, login["MINIO_ENDPOINT"], login["USERNAME"],
                              login["PASSWORD"], dest, provider="minio"),
    )  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    login = json.loads(CREDENTIALS.read_text())["MAD_MINIO"]
    client = s3_client(login)
    make_dataset(client)
    megabytes = sum(SIZES.values()) / (1 << 20)
    times: dict[str, list[float]] = {"cache": [], "plain": []}
    for _ in range(options.rounds):
        # In turns, in fresh directories: neither side finds the other's files.
        with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
            times["plain"].append(plain(client, Path(scratch)))
        with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
            times["cache"].append(cached(login, Path(scratch)))
    for name, seconds in times.items():
        median = statistics.median(seconds)
        runs = " ".join(f"{s:.2f}" for s in seconds)
        print(f"{name:>5}: {median:.2f} s median ({megabytes / median:.0f} MiB/s; runs {runs})")
    ratio = statistics.median(times["cache"]) / statistics.median(times["plain"])
    print(f"ratio cache/plain: {ratio:.2f} for {megabytes:.0f} MiB in {len(SIZES)} objects")


if __name__ == "__main__":
    main()
