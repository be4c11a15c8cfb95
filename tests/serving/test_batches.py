"""The pure parts of batches: file parsing, validation with line numbers, limits, item keys,
state counts and the report (rows, summary, contact sheet, HTML)."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from tessera.models.config import NativeModelConfig
from tessera.models.registry import load_model
from tessera.serving.batches import report
from tessera.serving.batches.spec import (
    MAX_BATCH_LINES, BatchFileError, BatchSettings, check_name, check_output_prefix, idempotency_key, name_from_file,
    parse_batch, require_valid,
)
from tessera.serving.batches.state import BatchSpec, BatchState, ItemState, counts, final_state, initial_progress
from tessera.serving.config import LimitsConfig
from tessera.serving.errors import InvalidRequestError

CARD = load_model(NativeModelConfig(), parts=()).card
LIMITS = LimitsConfig()


def jsonl(*rows) -> bytes:
    return "\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows).encode()


def parse(data: bytes, **kw):
    return parse_batch(data, CARD, LIMITS, **kw)


def test_jsonl_lines_ids_and_errors_with_line_numbers():
    data = jsonl(
        {"id": "a", "prompt": "a red circle moving right", "duration_s": 1, "width": 64, "height": 64, "steps": 2},
        "",
        "# a comment",
        {"prompt": "", "duration_s": 1},
        {"prompt": "a blue square", "width": 100},
        "{not json",
        {"prompt": "a green square", "seed": 3},
        {"id": "a", "prompt": "again"},
        {"prompt": "x", "colour": "red"},
        {"prompt": "x", "idempotency_key": "k"},
    )
    parsed = parse(data)
    assert [(i.line, i.id) for i in parsed.items] == [(1, "a"), (7, "line-7")]
    errors = {line.line: line.error for line in parsed.invalid}
    assert str(parsed.invalid[0]).startswith("line 4: prompt is empty")
    assert "width 100 is not a multiple of 16" in errors[5]
    assert "not valid JSON" in errors[6]
    assert "used twice (first on line 1)" in errors[8]
    assert "colour" in errors[9]
    assert "idempotency_key is set by the batch" in errors[10]
    with pytest.raises(BatchFileError, match=r"6 of 8 lines are invalid .*line 4: prompt is empty"):
        require_valid(parsed, skip_invalid=False)
    require_valid(parsed, skip_invalid=True)


def test_batch_priority_is_the_default_and_a_line_may_set_its_own():
    parsed = parse(jsonl({"prompt": "a red circle"}, {"prompt": "a red circle", "priority": 3}), priority=-4)
    assert [i.request.priority for i in parsed.items] == [-4, 3]
    bad = parse(jsonl({"prompt": "a red circle", "priority": 99}))
    assert "priority must be between" in bad.invalid[0].error


def test_csv_with_types_and_media():
    data = b"id,prompt,duration_s,width,height,loop,from_image\nx,a red circle,1,64,64,true,\ny,a blue circle,1.5,64,64,,s3://b/t/img.png\n,,,,,,\nz,,1,64,64,,\n"
    parsed = parse(data, filename="f.csv")
    assert [(i.line, i.id) for i in parsed.items] == [(2, "x"), (3, "y")]
    assert parsed.items[0].request.loop is True and parsed.items[0].request.duration_s == 1.0
    assert parsed.items[1].request.from_image.uri == "s3://b/t/img.png"
    assert parsed.invalid[0].line == 5 and "prompt is empty" in parsed.invalid[0].error


def test_local_media_paths_are_read_through_the_callback():
    files = {"img/a.png": b"\x89PNG..."}
    parsed = parse(jsonl({"prompt": "animate", "from_image": "img/a.png"}, {"prompt": "x", "edit_video": "missing.mp4"}),
                   files=files.get)
    assert parsed.items[0].request.from_image.data == files["img/a.png"]
    assert "no such local file" in parsed.invalid[0].error


def test_limits():
    with pytest.raises(BatchFileError, match="the limit is 3"):
        parse(jsonl(*[{"prompt": "p"}] * 4), max_lines=3)
    with pytest.raises(BatchFileError, match="bytes; the limit is 10 bytes"):
        parse(b"x" * 11, max_bytes=10)
    with pytest.raises(BatchFileError, match="holds no requests"):
        parse(b"\n# nothing\n")
    with pytest.raises(BatchFileError, match="not UTF-8"):
        parse(b"\xff\xfe\x00")
    assert MAX_BATCH_LINES == 1000


def test_names_keys_and_prefixes():
    assert check_name("night-run.2") == "night-run.2"
    for bad in ("", "Night", "-x", "a/b", "x" * 64):
        with pytest.raises(InvalidRequestError):
            check_name(bad)
    assert name_from_file("s3://b/t/Night Run.jsonl") == "night-run"
    k1 = idempotency_key("t", "b", "item", 1)
    assert k1 == idempotency_key("t", "b", "item", 1) and k1 != idempotency_key("t", "b", "item", 2)
    assert k1 != idempotency_key("t2", "b", "item", 1) and len(k1) <= LIMITS.max_idempotency_key_chars
    assert check_output_prefix("", "bk", "t", "b") == "t/batches/b/"
    assert check_output_prefix("s3://bk/t/out/", "bk", "t", "b") == "t/out/"
    for bad in ("s3://other/t/x", "s3://bk/u/x", "http://x", "s3://bk/t/../u"):
        with pytest.raises(InvalidRequestError):
            check_output_prefix(bad, "bk", "t", "b")


def _spec(n_items=3, invalid=1):
    lines = [{"id": f"i{k}", "prompt": f"prompt {k}", "duration_s": 1} for k in range(n_items)] + [{"prompt": ""}] * invalid
    parsed = parse(jsonl(*lines))
    return BatchSpec(name="b", tenant="t", created_at=0.0, file_sha256=parsed.file_sha256, settings=BatchSettings(),
                     items=parsed.items, invalid=parsed.invalid, output_prefix="t/batches/b/")


def _poster(colour) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(out, format="PNG")
    return out.getvalue()


def test_counts_eta_and_final_state():
    spec = _spec()
    progress = initial_progress(spec)
    progress.started_at = 100.0
    progress.items[0].state, progress.items[0].video_seconds = ItemState.SUCCEEDED, 1.0
    progress.items[1].state, progress.items[1].fraction = ItemState.RUNNING, 0.5
    c = counts(spec, progress, now=110.0)
    assert (c.total, c.succeeded, c.running, c.pending, c.invalid, c.video_seconds) == (3, 1, 1, 1, 1, 1.0)
    assert c.eta_s == pytest.approx((2 - 0.5) / (1.5 / 10))
    progress.items[1].state, progress.items[2].state = ItemState.FAILED, ItemState.SUCCEEDED
    assert final_state(progress) == BatchState.FAILED
    progress.cancelled = True
    assert final_state(progress) == BatchState.CANCELLED


def test_report_rows_summary_contact_sheet_and_html():
    spec = _spec()
    progress = initial_progress(spec)
    progress.started_at, progress.ended_at, progress.state = 0.0, 10.0, BatchState.FAILED
    ok = progress.items[0]
    ok.state, ok.video_seconds, ok.seed, ok.job_id = ItemState.SUCCEEDED, 1.0, 7, "j1"
    ok.outputs = {"video": "t/batches/b/i0/video.mp4", "poster": "t/batches/b/i0/poster.png", "manifest": "t/batches/b/i0/manifest.json"}
    progress.items[1].state, progress.items[1].error = ItemState.FAILED, "INTERNAL: <boom> & co"
    progress.items[2].state, progress.items[2].error = ItemState.CANCELLED, "cancelled with the batch"
    rows = report.report_rows(spec, progress, lambda key: f"s3://bk/{key}")
    assert [r["line"] for r in rows] == [1, 2, 3, 4] and rows[3]["state"] == "INVALID"
    assert rows[0]["video_uri"] == "s3://bk/t/batches/b/i0/video.mp4" and rows[0]["seed"] == 7
    lines = report.report_jsonl(rows).decode().splitlines()
    assert len(lines) == 4 and json.loads(lines[1])["error"].startswith("INTERNAL")
    summary = report.summary(spec, progress, now=10.0)
    assert summary["counts"]["succeeded"] == 1 and summary["counts"]["invalid"] == 1
    assert summary["video_seconds"] == 1.0 and summary["wall_time_s"] == 10.0 and summary["throughput_video_s_per_hour"] == 360.0

    tiles = [(report.tile_label(r), _poster((255, 0, 0)) if r["state"] == "SUCCEEDED" else None) for r in rows[:3]]
    sheet = Image.open(io.BytesIO(report.contact_sheet(tiles)))
    columns, grid_rows = report.contact_sheet_layout(3)
    assert sheet.size == (columns * report.TILE, grid_rows * (report.TILE + report.LABEL_H))
    assert sheet.getpixel((report.TILE // 2, report.TILE // 2)) == (255, 0, 0)

    page = report.report_html(spec, summary, rows, lambda uri: "https://signed/" + uri[5:]).decode()
    assert page.count("class='item'") == 3 and page.count("class='poster'") == 1
    assert "INTERNAL: &lt;boom&gt; &amp; co" in page and "<boom>" not in page
    assert "https://signed/bk/t/batches/b/i0/video.mp4" in page
    assert page.count("class='problem'") == 3  # failed, cancelled, invalid
