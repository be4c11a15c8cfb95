"""Small helpers shared by tests (no fakes: these only inspect real outputs)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tessera.cluster.stack import pick_free_port as free_port  # noqa: F401  (outside the ephemeral range)


def ffprobe(path: str | Path) -> dict:
    """Stream facts of a video file, frames counted by decoding."""
    result = subprocess.run(
        [
            "ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
            "-show_entries", "stream=codec_name,width,height,nb_read_frames,r_frame_rate,pix_fmt",
            "-show_entries", "format=format_name,duration",
            "-of", "json", str(path),
        ],
        capture_output=True, text=True, check=True,
    )
    data = json.loads(result.stdout)
    stream = data["streams"][0]
    num, den = (int(x) for x in stream["r_frame_rate"].split("/"))
    return {
        "codec": stream["codec_name"],
        "width": int(stream["width"]),
        "height": int(stream["height"]),
        "frames": int(stream["nb_read_frames"]),
        "fps": num / den,
        "pix_fmt": stream["pix_fmt"],
        "format": data["format"]["format_name"],
        "duration": float(data["format"]["duration"]),
    }


def replica_pids(deployment: str, app: str = "tessera") -> list[int]:
    """Pids of the live Serve replicas of ``deployment`` (Ray titles their processes
    ``ray::ServeReplica:<app>:<deployment>``)."""
    title = f"ServeReplica:{app}:{deployment}"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split(") ", 1)[1].split()[0]
        except OSError:
            continue
        if title in cmdline and state != "Z":
            pids.append(int(entry.name))
    return sorted(pids)


def owner_pid(owner: str) -> int:
    """The pid in a lease owner's name (``<replica>@<host>:<pid>``)."""
    return int(owner.rsplit(":", 1)[1])
