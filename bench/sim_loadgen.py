"""Load generator for ``bench/sim_traffic.py``: runs in a process of its own, so its gRPC calls and
threads share nothing with the bench's driver (which holds the Ray connection).

    python bench/sim_loadgen.py --address 127.0.0.1:PORT --plan plan.json --out results.json

The API key comes from ``$TESSERA_API_KEY``. ``plan.json``: ``{"arrivals": [{"at_s", "kind",
"request"}...], "max_jobs", "max_s", "job_timeout_s"}``. Each arrival is submitted (``SubmitJob``)
at its time, in a thread of its own, and followed to its end (``WatchJob``); bounded in count
(``max_jobs``) and time (submissions stop after ``max_s``, each job is given up after
``job_timeout_s``). Writes one row per job: kind, priority, submit and end times (seconds since
the plan's start), latency, state, the job's own stage timings.
"""

from __future__ import annotations

import argparse
import json
import threading
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--plan", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from tessera.serving.api import tessera_pb2 as pb
    from tessera.serving.client import TesseraClient, TesseraError

    plan = json.loads(open(args.plan).read())
    arrivals = plan["arrivals"][: plan["max_jobs"]]
    rows: list[dict] = []
    lock = threading.Lock()
    client = TesseraClient(args.address)
    origin = time.monotonic()

    def one(arrival: dict) -> None:
        submitted = time.monotonic() - origin
        row = {"kind": arrival["kind"], "priority": arrival["request"].get("priority", 0), "planned_at_s": arrival["at_s"],
               "submitted_at_s": submitted}
        try:
            job = client.submit(**arrival["request"])
            row["job_id"] = job.job_id
            try:
                job = client.wait(job.job_id, timeout_s=plan["job_timeout_s"])  # WatchJob: streamed to its end
            except TesseraError as error:
                job = error.job or client.get(job.job_id)
            row["state"] = pb.JobState.Name(job.state)
            t = job.timings
            row["timings"] = {"queued_s": t.queued_s, "expand_s": t.expand_s, "denoise_s": t.denoise_s,
                              "decode_s": t.decode_s, "finalize_s": t.finalize_s, "total_s": t.total_s}
            row["video_s"] = job.duration_s
        except TesseraError as error:
            row["state"] = f"ERROR {error.code.name}"
            row["error"] = str(error)[:300]
        row["ended_at_s"] = time.monotonic() - origin
        row["latency_s"] = row["ended_at_s"] - submitted
        with lock:
            rows.append(row)

    threads = []
    for arrival in arrivals:
        if arrival["at_s"] > plan["max_s"]:
            break
        time.sleep(max(0.0, arrival["at_s"] - (time.monotonic() - origin)))
        thread = threading.Thread(target=one, args=(arrival,), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(timeout=plan["job_timeout_s"] + 30)
    client.close()
    with open(args.out, "w") as out:
        json.dump({"rows": sorted(rows, key=lambda r: r["submitted_at_s"]), "wall_s": time.monotonic() - origin}, out)


if __name__ == "__main__":
    main()
