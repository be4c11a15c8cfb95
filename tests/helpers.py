"""Small helpers shared by tests (no fakes: these only inspect real outputs)."""

from __future__ import annotations

import errno
import json
import random
import socket
import subprocess
from pathlib import Path

# Ports handed to servers a test starts later. Not from the kernel's ephemeral range (32768-60999
# on Linux): Ray opens hundreds of outbound connections while it starts, and one of them can land
# on a port picked there seconds earlier (CI saw the gRPC proxy fail to bind that way). Below
# 20000 are Ray's worker ports (10002-19999).
TEST_PORTS = range(20000, 32768)


def free_port() -> int:
    """A port nothing listens on or is bound to now, on every interface (as the gRPC proxy binds)."""
    for port in random.sample(TEST_PORTS, 200):
        if all(_binds(family, host, port) for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0"))):
            return port
    raise RuntimeError(f"no free port in {TEST_PORTS.start}-{TEST_PORTS.stop - 1} after 200 tries")


def _binds(family: socket.AddressFamily, host: str, port: int) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, port))
    except OSError as error:
        return error.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)  # no IPv6 here: IPv4 decides
    return True


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
