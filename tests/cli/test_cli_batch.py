"""`tessera batch` as a user runs it: every subcommand a subprocess against a stack `tessera up`
started (and `tessera down` stops at the end of the module).

Like test_cli.py this module starts its own Ray instance through the real daemon, and it runs
before the integration tests (file order), so the two never run at the same time. Renders are
tiny (64x64, 1 s, 2 steps) to keep the wall time short on 2 cores."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tessera.cluster.s3_server import read_credentials
from tessera.serving.storage import ObjectStore, StorageConfig
from tessera.serving.video import encode_png
from tests.cli.test_cli import tessera
from tests.helpers import free_port

pytestmark = pytest.mark.integration

TINY = {"duration_s": 1, "width": 64, "height": 64, "steps": 2}
LATE_KEY = "default/cli-inputs/late.png"  # an input that only exists once the test uploads it


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("batch-cli") / "home"
    grpc_port = free_port()
    http_port = free_port(avoid={grpc_port})
    tessera(home, "up", "--grpc-port", str(grpc_port), "--http-port", str(http_port),
            "--s3-port", str(free_port(avoid={grpc_port, http_port})))
    try:
        yield home
    finally:
        tessera(home, "down")


def stack_store(home: Path) -> ObjectStore:
    """The embedded S3 server of the stack under ``home``, with the credentials it generated."""
    state = json.loads((home / "stack.json").read_text())
    credentials = read_credentials(home / "s3")
    return ObjectStore(StorageConfig(endpoint_url=state["s3_endpoint"], bucket=state["bucket"], region="us-east-1",
                                     access_key_id=credentials.access_key_id, secret_access_key=credentials.secret_access_key))


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_batch_commands_as_a_user_runs_them(home, tmp_path):
    bucket = json.loads((home / "stack.json").read_text())["bucket"]
    path = write_jsonl(tmp_path / "night.jsonl", [
        "# a comment line is skipped, and so is the blank one",
        {"id": "red", "prompt": "a red circle moving right", "seed": 1, **TINY},
        "",
        {"prompt": "   ", **TINY},  # line 4: a bad line
        {"id": "late", "prompt": "the circle moves on", "from_image": f"s3://{bucket}/{LATE_KEY}", "seed": 2, **TINY},
        {"id": "blue", "prompt": "a blue square moving up", "seed": 3, "priority": 1, **TINY},
        {"id": "huge", "prompt": "too wide", **{**TINY, "width": 100}},  # line 7: a second bad line
    ])
    options = ["--name", "night", "--concurrency", "2", "--priority", "-3"]

    # Validated whole: every bad line named by its number, exit 1, nothing created.
    refused = tessera(home, "batch", "submit", str(path), *options, check=False)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("error: INVALID_ARGUMENT: 2 of 5 lines are invalid (nothing was rendered; ")
    assert "line 4: prompt is empty: describe the video to render" in refused.stderr
    assert "line 7: width 100 is not a multiple of 16" in refused.stderr
    missing = tessera(home, "batch", "status", "night", check=False)
    assert missing.returncode == 1 and missing.stderr.startswith("error: NOT_FOUND: ")

    # --skip-invalid renders the rest; --wait follows it to the end. "late" fails (its input is
    # missing), so the batch ends FAILED and the command exits 1.
    run = tessera(home, "batch", "submit", str(path), *options, "--skip-invalid", "--wait", check=False)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.startswith("batch night: submitted, 3 items, 2 invalid lines skipped\n")
    assert "skipped: line 4: prompt is empty" in run.stderr and "skipped: line 7: width 100" in run.stderr
    assert re.search(r"\] night: 2/3 done, 1 failed, 0 running, 0 queued, 2\.\d video-s \(FAILED\)", run.stdout), run.stdout
    assert "night: 0/3 done" in run.stderr, "the progress bar (one line per change off a tty) follows it"

    status = tessera(home, "batch", "status", "night").stdout
    rows = {m["id"]: m for m in re.finditer(r"line +(?P<line>\d+) +(?P<id>\S+) +(?P<state>[A-Z]+) +(?P<job>\S+) +(?P<where>.*)", status)}
    assert {i: (int(m["line"]), m["state"]) for i, m in rows.items()} == {"red": (2, "SUCCEEDED"), "late": (5, "FAILED"),
                                                                          "blue": (6, "SUCCEEDED")}
    assert rows["red"]["where"] == f"s3://{bucket}/default/batches/night/red/video.mp4"
    assert "NOT_FOUND" in rows["late"]["where"] or "not found" in rows["late"]["where"].lower(), rows["late"]["where"]
    assert "skipped:   line 4: prompt is empty" in status and "report:    s3://" in status
    as_json = json.loads(tessera(home, "batch", "status", "night", "--json").stdout)
    assert as_json["state"] == "FAILED" and as_json["concurrency"] == 2 and as_json["priority"] == -3
    # --priority is the items' default; a line's own priority wins.
    jobs = {job["job_id"]: job for job in json.loads(tessera(home, "jobs", "list", "--json").stdout)["jobs"]}
    assert {i: jobs[rows[i]["job"]]["request"].get("priority", 0) for i in ("red", "blue")} == {"red": -3, "blue": 1}

    # retry: only the failed item, as a new job, once its input exists.
    stack_store(home).put_bytes(LATE_KEY, encode_png(np.full((64, 64, 3), 200, np.uint8)), content_type="image/png")
    retried = tessera(home, "batch", "retry", "night", "--wait")
    assert retried.stdout.startswith("batch night: retrying 1 failed items\n")
    assert re.search(r"\] night: 3/3 done, 0 failed, .* \(SUCCEEDED\)", retried.stdout), retried.stdout

    # cancel: a second batch, one item at a time (of 40 steps, 2 s: too many to end before the
    # cancel comes, however slow the CLI starts); what had not started never does.
    stop = write_jsonl(tmp_path / "stop.jsonl", [{"id": f"s{k}", "prompt": "a green circle moving left", "seed": k,
                                                   **{**TINY, "steps": 40, "duration_s": 2}} for k in range(10)])
    started = tessera(home, "batch", "submit", str(stop), "--concurrency", "1")
    assert "batch stop: submitted, 10 items" in started.stdout and "tessera batch status stop --watch" in started.stdout
    cancelled = tessera(home, "batch", "cancel", "stop").stdout
    assert "(CANCELLED)" in cancelled.splitlines()[0]
    states = re.findall(r"line +\d+ +s\d +([A-Z]+) +(\S+) +(.*)", cancelled)
    assert len(states) == 10 and {state for state, _, _ in states} <= {"CANCELLED", "SUCCEEDED"}, cancelled
    never = [(job, where) for state, job, where in states if state == "CANCELLED" and job == "-"]
    assert len(never) >= 2 and all(where == "cancelled with the batch before it started" for _, where in never), cancelled

    listing = tessera(home, "batch", "list").stdout.splitlines()
    assert any(" night: 3/3 done" in line and "(SUCCEEDED)" in line for line in listing), listing
    assert any(" stop: " in line and "(CANCELLED)" in line for line in listing), listing

    # results: where the report is, and --download fetches it.
    out = tmp_path / "results"
    results = tessera(home, "batch", "results", "night", "--download", str(out)).stdout
    assert f"report.html:   s3://{bucket}/default/batches/night/report.html" in results
    assert f"local:         {(out / 'summary.json').resolve()}" in results
    report = [json.loads(line) for line in (out / "report.jsonl").read_text().splitlines()]
    assert [(r["line"], r["id"], r["state"]) for r in report] == [
        (2, "red", "SUCCEEDED"), (4, "", "INVALID"), (5, "late", "SUCCEEDED"), (6, "blue", "SUCCEEDED"), (7, "huge", "INVALID")]
    assert report[1]["error"] == "prompt is empty: describe the video to render"
    assert report[2]["attempts"] == 2 and report[2]["previous_errors"], "the failed attempt's reason is kept"
    assert report[2]["job_id"] != rows["late"]["job"], "the retry is a new job"
    assert (report[0]["job_id"], report[3]["job_id"]) == (rows["red"]["job"], rows["blue"]["job"]), "the others ran once"
    assert all(r["video_uri"] == f"s3://{bucket}/default/batches/night/{r['id']}/video.mp4" for r in report if r["state"] == "SUCCEEDED")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["state"] == "SUCCEEDED" and summary["lines"] == 5
    assert {k: summary["counts"][k] for k in ("total", "succeeded", "failed", "invalid")} == {"total": 3, "succeeded": 3,
                                                                                               "failed": 0, "invalid": 2}
    assert summary["concurrency"] == 2 and summary["priority"] == -3
    assert summary["video_seconds"] == pytest.approx(3.0, abs=0.5)
    assert [line["line"] for line in summary["invalid_lines"]] == [4, 7]
    assert (out / "contact_sheet.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "report.html").read_bytes().startswith(b"<!doctype html>")
