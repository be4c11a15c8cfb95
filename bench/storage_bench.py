"""Timings of the embedded S3 server and ObjectStore on this machine (never part of CI's pass/fail).

    .venv/bin/python bench/storage_bench.py [--out bench/results/storage.json] [--multipart-mib 64]

Measures: server start and stop, small put/get/head latency, presigned GET over urllib, listing a
page among many keys, and multipart upload / download throughput. Prints and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from tessera.cluster.s3_server import EmbeddedS3Config, EmbeddedS3Server
from tessera.serving.storage import ObjectStore, StorageConfig

MiB = 1024 * 1024


def summary_ms(samples_s: list[float]) -> dict:
    ordered = sorted(samples_s)
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 2),
        "min_ms": round(ordered[0] * 1000, 2),
    }


def timed(fn, repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def store_for(server: EmbeddedS3Server, part_size: int) -> ObjectStore:
    return ObjectStore(StorageConfig(
        endpoint_url=server.endpoint_url, bucket=server.bucket, multipart_part_size=part_size,
        access_key_id=server.credentials.access_key_id, secret_access_key=server.credentials.secret_access_key,
    ))


def bench_lifecycle(root: Path, runs: int) -> dict:
    starts, stops = [], []
    for run in range(runs):
        server = EmbeddedS3Server(EmbeddedS3Config(data_dir=root / f"lifecycle-{run % 2}"))
        started = time.perf_counter()
        server.start()
        starts.append(time.perf_counter() - started)
        started = time.perf_counter()
        server.stop()
        stops.append(time.perf_counter() - started)
    return {"start": summary_ms(starts), "stop": summary_ms(stops)}


def bench_small_objects(store: ObjectStore, repeat: int) -> dict:
    payload = os.urandom(1024)
    store.put_bytes("bench/small", payload)
    store.get_bytes("bench/small")  # warm the connection pool
    counter = iter(range(10**9))
    return {
        "put_1KiB": summary_ms(timed(lambda: store.put_bytes(f"bench/small-{next(counter)}", payload), repeat)),
        "get_1KiB": summary_ms(timed(lambda: store.get_bytes("bench/small"), repeat)),
        "head": summary_ms(timed(lambda: store.head("bench/small"), repeat)),
        "put_json_record": summary_ms(timed(lambda: store.put_json("bench/record.json", {"state": "RUNNING", "x": list(range(50))}), repeat)),
        "presigned_get_urllib": summary_ms(timed(lambda: urllib.request.urlopen(store.presign_get("bench/small")).read(), repeat)),
    }


def bench_listing(store: ObjectStore, keys: int) -> dict:
    for index in range(keys):
        store.put_bytes(f"bench/list/{index:06d}.json", b"{}")
    first_page = timed(lambda: store.list_keys("bench/list/", limit=100), 20)
    full = timed(lambda: list(store.iter_keys("bench/list/")), 3)
    return {"keys": keys, "first_100": summary_ms(first_page), f"all_{keys}": summary_ms(full)}


def bench_multipart(store: ObjectStore, total_mib: int) -> dict:
    chunk = os.urandom(MiB)
    uploads, downloads = [], []
    for run in range(3):
        key = f"bench/video-{run}.mp4"
        started = time.perf_counter()
        with store.open_multipart(key, "video/mp4") as writer:
            for _ in range(total_mib):
                writer.write(chunk)
        uploads.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert len(store.get_bytes(key)) == total_mib * MiB
        downloads.append(time.perf_counter() - started)
    return {
        "object_mib": total_mib,
        "part_mib": store.config.multipart_part_size // MiB,
        "upload_mib_per_s": round(total_mib / statistics.median(uploads), 1),
        "download_mib_per_s": round(total_mib / statistics.median(downloads), 1),
        "upload_s": [round(s, 3) for s in uploads],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/storage.json"))
    parser.add_argument("--multipart-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--list-keys", type=int, default=2000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tessera-s3-bench-") as tmp:
        root = Path(tmp)
        results = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "server": bench_lifecycle(root, runs=8),
        }
        with EmbeddedS3Server(EmbeddedS3Config(data_dir=root / "main")) as server:
            store = store_for(server, part_size=8 * MiB)
            results["small_objects"] = bench_small_objects(store, args.repeat)
            results["listing"] = bench_listing(store, args.list_keys)
            results["multipart"] = bench_multipart(store, args.multipart_mib)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
