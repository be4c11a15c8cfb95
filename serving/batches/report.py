"""A batch's report: ``report.jsonl``, ``summary.json``, ``contact_sheet.png`` and a static
``report.html`` that needs no server (posters and videos by presigned URL). Pure: plain data
and bytes in, bytes out."""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Callable

from tessera.serving.batches.state import BatchProgress, BatchSpec, ItemState, counts

REPORT_FILES = ("report.jsonl", "summary.json", "contact_sheet.png", "report.html")
TILE = 128
LABEL_H = 18


def report_rows(spec: BatchSpec, progress: BatchProgress, uri: Callable[[str], str]) -> list[dict]:
    """One row per line of the file: the items in line order, then the lines skipped as invalid."""
    rows = []
    requests = {item.id: item.request for item in spec.items}
    for item in progress.items:
        rows.append({
            "line": item.line, "id": item.id, "state": item.state.value, "prompt": requests[item.id].prompt,
            "job_id": item.job_id, "attempts": item.attempt,
            "video_uri": uri(item.outputs["video"]) if "video" in item.outputs else "",
            "image_uri": uri(item.outputs["image"]) if "image" in item.outputs else "",
            "poster_uri": uri(item.outputs["poster"]) if "poster" in item.outputs else "",
            "manifest_uri": uri(item.outputs["manifest"]) if "manifest" in item.outputs else "",
            "seed": item.seed, "width": item.width, "height": item.height, "video_seconds": round(item.video_seconds, 3),
            "submitted_at": item.submitted_at, "ended_at": item.ended_at, "timings": item.timings,
            "error": item.error, "previous_errors": [a.model_dump() for a in item.errors],
        })
    for line in spec.invalid:
        rows.append({"line": line.line, "id": line.id, "state": "INVALID", "prompt": "", "job_id": "", "error": line.error})
    rows.sort(key=lambda row: row["line"])
    return rows


def report_jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows).encode()


def summary(spec: BatchSpec, progress: BatchProgress, now: float) -> dict:
    c = counts(spec, progress, now)
    ended = progress.ended_at or now
    wall = max(0.0, ended - progress.started_at)
    return {
        "batch": spec.name, "tenant": spec.tenant, "state": progress.state.value, "source": spec.source,
        "file_sha256": spec.file_sha256, "lines": len(spec.items) + len(spec.invalid),
        "counts": {k: getattr(c, k) for k in ("total", "succeeded", "failed", "cancelled", "pending", "queued", "running", "invalid")},
        "video_seconds": round(c.video_seconds, 3), "wall_time_s": round(wall, 3),
        "throughput_video_s_per_hour": round(c.video_seconds / wall * 3600, 3) if wall > 0 else 0.0,
        "items_per_hour": round(c.succeeded / wall * 3600, 3) if wall > 0 else 0.0,
        "concurrency": spec.settings.concurrency, "priority": spec.settings.priority,
        "created_at": spec.created_at, "started_at": progress.started_at, "ended_at": progress.ended_at,
        "invalid_lines": [line.model_dump() for line in spec.invalid],
    }


def contact_sheet(tiles: list[tuple[str, bytes | None]], columns: int = 0, tile: int = TILE) -> bytes:
    """A PNG grid, one labelled tile per (label, poster PNG bytes or None for a grey tile)."""
    from PIL import Image, ImageDraw

    count = max(1, len(tiles))
    columns = columns or min(count, max(1, math.ceil(math.sqrt(count))))
    rows = math.ceil(count / columns)
    sheet = Image.new("RGB", (columns * tile, rows * (tile + LABEL_H)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for index, (label, poster) in enumerate(tiles):
        x, y = (index % columns) * tile, (index // columns) * (tile + LABEL_H)
        if poster:
            image = Image.open(io.BytesIO(poster)).convert("RGB")
            image.thumbnail((tile, tile))
            sheet.paste(image, (x + (tile - image.width) // 2, y + (tile - image.height) // 2))
        else:
            draw.rectangle([x + 2, y + 2, x + tile - 3, y + tile - 3], fill=(70, 70, 70))
        draw.text((x + 3, y + tile + 3), label[:20], fill=(235, 235, 235))
    out = io.BytesIO()
    sheet.save(out, format="PNG")
    return out.getvalue()


def contact_sheet_layout(count: int, columns: int = 0) -> tuple[int, int]:
    columns = columns or min(max(1, count), max(1, math.ceil(math.sqrt(max(1, count)))))
    return columns, math.ceil(max(1, count) / columns)


_CSS = """body{font-family:system-ui,sans-serif;background:#111;color:#eee;margin:24px}
h1{font-size:20px}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:12px}
.item{background:#222;border-radius:6px;padding:8px}.item img{width:100%;image-rendering:pixelated;background:#333}
.state{font-size:12px;font-weight:bold}.SUCCEEDED{color:#6c6}.FAILED{color:#e66}.CANCELLED{color:#ca6}
.prompt{font-size:13px;margin:4px 0}.error{color:#e88;font-size:12px;white-space:pre-wrap}
table{border-collapse:collapse}td,th{border:1px solid #444;padding:4px 8px;text-align:left;font-size:13px}"""


def report_html(spec: BatchSpec, summary_data: dict, rows: list[dict], url: Callable[[str], str]) -> bytes:
    """The static page: counts, a grid of the items (poster, prompt, state, link to the video),
    then the failed, cancelled and invalid lines with their errors. ``url`` signs an s3:// URI."""
    e = html.escape
    c = summary_data["counts"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Batch {e(spec.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Batch {e(spec.name)} <span class='state {e(summary_data['state'])}'>{e(summary_data['state'])}</span></h1>",
        f"<p id='summary'>{c['succeeded']} succeeded, {c['failed']} failed, {c['cancelled']} cancelled, "
        f"{c['invalid']} invalid lines; {summary_data['video_seconds']:g} video-seconds in {summary_data['wall_time_s']:.0f} s</p>",
        "<div class='grid' id='items'>",
    ]
    for row in rows:
        if row["state"] == "INVALID":
            continue
        media = row.get("video_uri") or row.get("image_uri")
        poster = row.get("poster_uri") or row.get("image_uri")
        parts.append(f"<div class='item' data-id='{e(row['id'])}' data-state='{e(row['state'])}' data-line='{row['line']}'>")
        if poster:
            parts.append(f"<img class='poster' alt='{e(row['id'])}' src='{e(url(poster))}'>")
        parts.append(f"<div class='state {e(row['state'])}'>line {row['line']} &middot; {e(row['id'])} &middot; {e(row['state'])}</div>")
        parts.append(f"<div class='prompt'>{e(row['prompt'])}</div>")
        if media:
            parts.append(f"<a class='video' href='{e(url(media))}'>{'video' if row.get('video_uri') else 'image'}</a>")
        if row.get("error"):
            parts.append(f"<div class='error'>{e(row['error'])}</div>")
        parts.append("</div>")
    parts.append("</div>")
    problems = [row for row in rows if row["state"] in ("FAILED", "CANCELLED", "INVALID")]
    if problems:
        parts.append("<h2>Not rendered</h2><table id='problems'><tr><th>line</th><th>id</th><th>state</th><th>error</th></tr>")
        for row in problems:
            parts.append(f"<tr class='problem' data-state='{e(row['state'])}'><td>{row['line']}</td><td>{e(row['id'])}</td>"
                         f"<td>{e(row['state'])}</td><td class='error'>{e(row.get('error') or '')}</td></tr>")
        parts.append("</table>")
    # Once the page has loaded, say how many posters did (for checks by a headless browser).
    parts.append("<script>window.addEventListener('load',function(){var n=0;document.querySelectorAll('img.poster')"
                 ".forEach(function(i){if(i.complete&&i.naturalWidth>0)n++});document.body.setAttribute('data-posters-loaded',n)})"
                 "</script>")
    parts.append("</body></html>")
    return "".join(parts).encode()


def tile_label(row: dict) -> str:
    state = row["state"]
    return f"{row['line']}:{row['id']}" if state == ItemState.SUCCEEDED.value else f"{row['line']}:{state.lower()}"
