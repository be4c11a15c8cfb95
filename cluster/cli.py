"""``tessera``: run the embedded stack, generate videos, manage jobs.

    tessera up                      start Ray, the S3 server and the Serve app (gRPC, and HTTP /v1); stay running
    tessera status                  what runs, and each deployment's replicas
    tessera generate "a red circle moving right" --duration 2 --out clip.mp4
    tessera generate "a blue square" --image --out still.png            (and --from-image, --extend,
                                                                          --edit, --transition, --loop, --shots)
    tessera jobs list | get ID | watch ID | cancel ID
    tessera batch submit prompts.jsonl --wait   (and status|list|cancel|retry|results NAME)
    tessera down                    stop everything `up` started
    tessera run "prompt"            the one-shot demo: up, generate, print, down
    tessera auth key                print the embedded stack's API key (`up` made it; HOME/api_key)
    tessera auth new-key            a new key and the hash a config stores for it
    tessera auth hash [KEY]         the hash of a key (read from stdin without KEY)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tessera.serving.api import tessera_pb2 as pb

DEFAULT_HOME = Path(os.environ.get("TESSERA_HOME", Path.home() / ".tessera"))
_STAGE_WORDS = {
    pb.STAGE_QUEUED: "queued",
    pb.STAGE_EXPANDING_PROMPT: "expanding prompt",
    pb.STAGE_DENOISING: "denoising",
    pb.STAGE_DECODING: "decoding",
    pb.STAGE_FINALIZING: "finalizing",
    pb.STAGE_DONE: "done",
}


class ProgressBar:
    """One self-rewriting line on stderr, driven by the progress stream."""

    def __init__(self, stream=sys.stderr, width: int = 30):
        self.stream = stream
        self.width = width
        self.started = time.monotonic()
        self.interactive = stream.isatty()
        self._last_line = ""

    def __call__(self, progress: pb.Progress) -> None:
        filled = int(round(progress.fraction * self.width))
        detail = _STAGE_WORDS.get(progress.stage, "")
        if progress.stage == pb.STAGE_DENOISING and progress.total_steps:
            detail += f" step {progress.step}/{progress.total_steps}"
        if progress.stage == pb.STAGE_DECODING and progress.total_segments:
            detail += f" segment {progress.segments_done}/{progress.total_segments}"
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {progress.fraction * 100:5.1f}% {detail} ({time.monotonic() - self.started:.1f} s)"
        if self.interactive:
            self.stream.write("\r" + line.ljust(len(self._last_line)))
        elif detail != self._last_line.split("%", 1)[-1].split("(")[0].strip():
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last_line = line

    def finish(self) -> None:
        if self.interactive and self._last_line:
            self.stream.write("\n")
            self.stream.flush()


def _job_dict(job: pb.Job) -> dict:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(job, preserving_proto_field_name=True)


def _print_result(job: pb.Job, out: Path | None) -> None:
    print(f"job:       {job.job_id} ({pb.JobState.Name(job.state)})")
    print(f"caption:   {job.expanded_prompt}")
    if job.image_uri:
        print(f"image:     {job.image_uri}")
        print(f"url:       {job.image_url}")
    else:
        print(f"video:     {job.video_uri}")
        print(f"url:       {job.video_url}")
    print(f"poster:    {job.poster_uri}")
    print(f"manifest:  {job.manifest_uri}")
    if out is not None:
        print(f"local:     {out.resolve()}")
    t = job.timings
    print(
        f"timings:   total {t.total_s:.2f} s (queued {t.queued_s:.2f}, expand {t.expand_s:.2f}, "
        f"denoise {t.denoise_s:.2f}, decode {t.decode_s:.2f}, finalize {t.finalize_s:.2f})"
    )


def _client(args):
    from tessera.serving.client import TesseraClient

    return TesseraClient(args.address or _stack_address(args.home), api_key=args.api_key, home=args.home)


def _stack_address(home: Path) -> str:
    from tessera.cluster.stack import EmbeddedStack

    state = EmbeddedStack(home).read_state()
    return state.grpc_address if state else "127.0.0.1:9000"


def _generation_fields(args) -> dict:
    fields = {}
    for name, value in (
        ("duration_s", args.duration), ("num_frames", args.frames), ("width", args.width), ("height", args.height),
        ("fps", args.fps), ("seed", args.seed), ("steps", args.steps), ("guidance_scale", args.guidance),
    ):
        if value is not None:
            fields[name] = value
    if args.negative:
        fields["negative_prompt"] = args.negative
    if args.idempotency_key:
        fields["idempotency_key"] = args.idempotency_key
    if args.priority:
        fields["priority"] = args.priority
    if args.no_expand:
        fields["skip_prompt_expansion"] = True
    fields.update(_mode_fields(args))
    return fields


def _load_shots(path: str) -> tuple[list[dict], str]:
    """Shots from a YAML or JSON file: a list of shots, or {character: ..., shots: [...]}."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())  # JSON is YAML too
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML or JSON: {error}") from None
    character = ""
    if isinstance(data, dict):
        character = str(data.get("character", ""))
        data = data.get("shots")
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ValueError(f"{path} must hold a list of shots ({{prompt, duration_s, transition}}), or {{character, shots}}")
    return data, character


def _mode_fields(args) -> dict:
    """The generation-mode flags as request fields (the server checks that only one mode is set)."""
    fields: dict = {}
    if args.aspect:
        fields["aspect_ratio"] = args.aspect
    if args.short_side is not None:
        fields["short_side"] = args.short_side
    if args.image:
        fields["image"] = True
    if args.from_image:
        fields["from_image"] = args.from_image
        fields["image_is_last_frame"] = args.last_frame
    if args.extend:
        fields["extend_video"] = args.extend
        fields["backward"] = args.backward
        if args.seconds is not None:
            fields["extend_seconds"] = args.seconds
    if args.edit:
        fields["edit_video"] = args.edit
        if args.strength is not None:
            fields["strength"] = args.strength
    if args.transition:
        fields["transition_from"], fields["transition_to"] = args.transition
        if args.seconds is not None:
            fields["transition_seconds"] = args.seconds
    if args.loop:
        fields["loop"] = True
    if args.shots:
        fields["shots"], character = _load_shots(args.shots)
        if character:
            fields["character"] = character
    if args.character:
        fields["character"] = args.character
    return fields


def cmd_generate(args) -> int:
    from tessera.serving.client import TesseraError

    bar = ProgressBar()
    with _client(args) as client:
        try:
            job = client.generate(args.prompt, on_progress=None if args.quiet else bar, **_generation_fields(args))
        except TesseraError as error:
            bar.finish()
            print(f"error: {error.code.name}: {error.message}", file=sys.stderr)
            return 1
        bar.finish()
        out = None
        if args.out:
            out = client.download(job, args.out)
    if args.json:
        print(json.dumps(_job_dict(job), indent=2))
    else:
        _print_result(job, out)
    return 0


def cmd_jobs(args) -> int:
    from tessera.serving.client import TesseraError

    with _client(args) as client:
        try:
            if args.jobs_command == "list":
                state = pb.JobState.Value(args.state) if args.state else pb.JOB_STATE_UNSPECIFIED
                page = client.list(page_size=args.limit, page_token=args.page_token or "", state=state)
                if args.json:
                    print(json.dumps({"jobs": [_job_dict(j) for j in page.jobs], "next_page_token": page.next_page_token}, indent=2))
                else:
                    for job in page.jobs:
                        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created_at.seconds))
                        print(f"{job.job_id}  {pb.JobState.Name(job.state):9}  {created}  {job.duration_s:5.1f}s  {job.request.prompt[:60]}")
                    if page.next_page_token:
                        print(f"(more: --page-token {page.next_page_token})")
            elif args.jobs_command == "get":
                print(json.dumps(_job_dict(client.get(args.job_id)), indent=2))
            elif args.jobs_command == "watch":
                bar = ProgressBar()
                job = client.wait(args.job_id, on_progress=bar)
                bar.finish()
                _print_result(job, None)
            elif args.jobs_command == "cancel":
                job = client.cancel(args.job_id)
                print(f"{job.job_id}: {pb.JobState.Name(job.state)}")
        except TesseraError as error:
            print(f"error: {error.code.name}: {error.message}", file=sys.stderr)
            return 1
    return 0


def _batch_line(batch: pb.Batch, width: int = 24) -> str:
    c = batch.counts
    ended = c.succeeded + c.failed + c.cancelled
    filled = int(round(width * ended / c.total)) if c.total else 0
    eta = ""
    if batch.state == "RUNNING":
        eta = f", ETA {int(c.eta_s) // 60:02d}:{int(c.eta_s) % 60:02d}" if c.HasField("eta_s") else ", ETA --:--"
    return (f"[{'#' * filled}{'.' * (width - filled)}] {batch.name}: {c.succeeded}/{c.total} done, {c.failed} failed, "
            f"{c.running} running, {c.queued + c.pending} queued, {c.video_seconds:.1f} video-s{eta}"
            + (f" ({batch.state})" if batch.state != "RUNNING" else ""))


class BatchBar:
    """The batch's progress on one self-rewriting stderr line (a new line per change when not a tty)."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.interactive = stream.isatty()
        self._last = ""

    def __call__(self, batch: pb.Batch) -> None:
        line = _batch_line(batch)
        if self.interactive:
            self.stream.write("\r" + line.ljust(len(self._last)))
        elif line.split(", ETA")[0] != self._last.split(", ETA")[0]:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last = line

    def finish(self) -> None:
        if self.interactive and self._last:
            self.stream.write("\n")
            self.stream.flush()


def _print_batch(batch: pb.Batch, items: bool = True) -> None:
    print(_batch_line(batch))
    print(f"outputs:   {batch.output_prefix_uri}")
    for line in batch.invalid_lines:
        print(f"skipped:   line {line.line}: {line.error}")
    if items:
        for item in batch.items:
            where = item.video_uri or item.image_uri or item.error
            print(f"  line {item.line:4d}  {item.id:20.20}  {item.state:9}  {item.job_id or '-':16}  {where}")
    if batch.report.html_uri:
        print(f"report:    {batch.report.html_uri}")
        print(f"           {batch.report.html_url}")


def _print_results(batch: pb.Batch) -> None:
    r = batch.report
    for label, uri, url in (("report.html", r.html_uri, r.html_url), ("report.jsonl", r.report_jsonl_uri, r.report_jsonl_url),
                            ("summary", r.summary_uri, r.summary_url), ("contact sheet", r.contact_sheet_uri, r.contact_sheet_url)):
        print(f"{label + ':':15}{uri}\n{'':15}{url}")


def cmd_batch(args) -> int:
    from tessera.serving.client import TesseraError

    with _client(args) as client:
        try:
            command = args.batch_command
            if command == "submit":
                batch = client.submit_batch(args.file, name=args.name or "", concurrency=args.concurrency or 0,
                                            priority=args.priority, output_prefix=args.output_prefix or "",
                                            skip_invalid=args.skip_invalid, max_attempts=args.max_attempts or 0)
                print(f"batch {batch.name}: {'submitted' if batch.created else 'resumed'}, {batch.counts.total} items"
                      f"{f', {len(batch.invalid_lines)} invalid lines skipped' if batch.invalid_lines else ''}")
                for line in batch.invalid_lines:
                    print(f"skipped: line {line.line}: {line.error}", file=sys.stderr)
                if not args.wait:
                    print(f"follow it with: tessera batch status {batch.name} --watch")
                    return 0
                args.name = batch.name
                command = "watch"
            if command in ("status", "watch") and (command == "watch" or args.watch):
                bar = BatchBar()
                batch = client.wait_batch(args.name, on_progress=bar)
                bar.finish()
                _print_batch(batch, items=False)
                return 0 if batch.state == "SUCCEEDED" else 1
            if command == "status":
                batch = client.get_batch(args.name)
                if args.json:
                    print(json.dumps(_job_dict(batch), indent=2))
                else:
                    _print_batch(batch)
            elif command == "list":
                for batch in client.list_batches():
                    print(_batch_line(batch))
            elif command == "cancel":
                _print_batch(client.cancel_batch(args.name))
            elif command == "retry":
                batch = client.retry_batch(args.name)
                print(f"batch {batch.name}: retrying {batch.counts.failed} failed items")
                if args.wait:
                    bar = BatchBar()
                    batch = client.wait_batch(args.name, on_progress=bar)
                    bar.finish()
                    _print_batch(batch, items=False)
                    return 0 if batch.state == "SUCCEEDED" else 1
            elif command == "results":
                batch = client.get_batch(args.name)
                if not batch.report.html_uri:
                    print(f"batch {batch.name} is {batch.state}: its report is written when it ends", file=sys.stderr)
                    return 1
                _print_results(batch)
                if args.download:
                    for path in client.download_batch_results(batch, args.download, videos=args.videos):
                        print(f"local:         {path.resolve()}")
        except TesseraError as error:
            print(f"error: {error.code.name}: {error.message}", file=sys.stderr)
            return 1
    return 0


def cmd_up(args) -> int:
    from tessera.cluster.stack import EmbeddedStack

    stack = EmbeddedStack(args.home, config_path=args.config, grpc_port=args.grpc_port, s3_port=args.s3_port,
                          http_port=args.http_port, metrics_port=args.metrics_port)
    state = stack.up(log=print)
    print(f"gRPC:      {state.grpc_address}")
    if state.http_base_url:
        print(f"HTTP:      {state.http_base_url}   (OpenAI-compatible videos API)")
    print(f"S3:        {state.s3_endpoint or '(configured store)'} bucket {state.bucket}")
    if state.metrics_url:
        print(f"metrics:   {state.metrics_url}   (Prometheus; deploy/prometheus.yml, deploy/grafana/tessera.json)")
    if state.ray_logs_dir:
        print(f"logs:      {state.ray_logs_dir}/serve/   (one JSON line per event, per replica)")
    print(f"home:      {args.home}")
    _print_auth(state)
    _print_listening(state)
    return 0


def _print_auth(state) -> None:
    if state.auth == "stack-key" and state.api_key_created:
        from tessera.serving.auth import read_key_file

        print(f"API key:   {read_key_file(Path(state.api_key_file).parent)}")
        print(f"           (new: shown once; kept in {state.api_key_file}, mode 0600; `tessera auth key` prints it again;")
        print("           the CLI and the Python client send it by themselves: authorization: Bearer KEY)")
    elif state.auth == "stack-key":
        print(f"API key:   in {state.api_key_file} (`tessera auth key` prints it)")
    elif state.auth == "config-keys":
        print("API key:   the config's auth.api_keys (pass --api-key or set TESSERA_API_KEY)")
    elif state.auth == "off":
        print("API key:   none: auth.enabled is false, every caller is the default tenant")


def _print_listening(state) -> None:
    if not state.listening:
        return
    outside = [item for item in state.listening if not item["loopback"]]
    print("listening:", "every port on loopback only" if not outside else f"{len(outside)} port(s) beyond loopback")
    for item in state.listening:
        address = f"[{item['address']}]" if ":" in item["address"] else item["address"]
        where = "loopback" if item["loopback"] else "ALL INTERFACES" if item["address"] in ("::", "0.0.0.0") else "not loopback"
        print(f"  {address}:{item['port']:<6} {where:9} {item['role'] or item['process']}")


def cmd_down(args) -> int:
    from tessera.cluster.stack import EmbeddedStack

    EmbeddedStack(args.home).down(log=print)
    return 0


def cmd_status(args) -> int:
    from tessera.cluster.stack import EmbeddedStack

    report = EmbeddedStack(args.home).status()
    print(json.dumps(report, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in report.items()))
    return 0 if report.get("healthy") else 1


def cmd_run(args) -> int:
    """The README's main job: make sure the stack runs, render, print where the video is."""
    from tessera.cluster.stack import EmbeddedStack

    stack = EmbeddedStack(args.home, config_path=args.config, grpc_port=args.grpc_port, s3_port=args.s3_port,
                          http_port=args.http_port, metrics_port=args.metrics_port)
    started_here = stack.read_state() is None
    stack.up(log=print)
    try:
        if args.out is None:
            args.out = str(args.home / "outputs" / "tessera-demo.mp4")
        args.address = stack.read_state().grpc_address
        return cmd_generate(args)
    finally:
        if started_here and not args.keep:
            stack.down(log=print)


def cmd_auth(args) -> int:
    from tessera.serving.auth import hash_api_key, key_file, new_api_key, read_key_file

    if args.auth_command == "key":
        key = read_key_file(args.home)
        if key is None:
            print(f"error: no API key in {key_file(args.home)}: `tessera up` makes one when the config names no keys "
                  "(auth.api_keys) and auth is on", file=sys.stderr)
            return 1
        print(key)
    elif args.auth_command == "new-key":
        key = new_api_key()
        print(f"key:    {key}")
        print(f"hash:   {hash_api_key(key)}")
        print(f"config: auth: {{api_keys: {{{args.tenant}: [{hash_api_key(key)}]}}}}")
    elif args.auth_command == "hash":
        key = args.key if args.key is not None else sys.stdin.readline().strip()
        if not key:
            print("error: no key given (argument or one line on stdin)", file=sys.stderr)
            return 1
        print(hash_api_key(key))
    return 0


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="?", default="", help="what to render (optional with --shots)")
    parser.add_argument("--duration", type=float, help="seconds (or --frames)")
    parser.add_argument("--frames", type=int, help="number of frames (or --duration)")
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--fps", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    parser.add_argument("--negative", help="negative prompt")
    parser.add_argument("--idempotency-key")
    parser.add_argument("--priority", type=int, default=0)
    parser.add_argument("--no-expand", action="store_true", help="skip prompt expansion")
    parser.add_argument("--aspect", help="aspect ratio W:H instead of --width/--height, e.g. 16:9")
    parser.add_argument("--short-side", type=int, help="short side in pixels, with --aspect")
    modes = parser.add_argument_group("generation modes (one at a time; FILE may be a local file or an s3:// URI)")
    modes.add_argument("--image", action="store_true", help="render one frame, written as image.png")
    modes.add_argument("--from-image", metavar="FILE", help="animate an image: it becomes the first frame")
    modes.add_argument("--last-frame", action="store_true", help="with --from-image: the image is the last frame")
    modes.add_argument("--extend", metavar="VIDEO", help="continue a video by --seconds (after its end, or before with --backward)")
    modes.add_argument("--backward", action="store_true", help="with --extend: add the new seconds before the start")
    modes.add_argument("--seconds", type=float, help="new seconds for --extend; the bridge's length for --transition")
    modes.add_argument("--edit", metavar="VIDEO", help="video to video (SDEdit) under the prompt")
    modes.add_argument("--strength", type=float, help="with --edit: 0 < S <= 1, how far from the input (default 0.6)")
    modes.add_argument("--transition", nargs=2, metavar=("A", "B"), help="play A, a generated bridge, then B")
    modes.add_argument("--loop", action="store_true", help="a video whose end flows into its start")
    modes.add_argument("--shots", metavar="FILE", help="multi-shot: YAML/JSON list of {prompt, duration_s, transition: cut|blend}")
    modes.add_argument("--character", help="with --shots: what every shot shares (who, how they look)")
    parser.add_argument("--out", help="download the video (or image) to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the job as JSON")


def _add_stack_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="Tessera YAML config (default: the embedded CPU stack)")
    parser.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default 9000)")
    parser.add_argument("--s3-port", type=int, default=None, help="embedded S3 server port (default 9010)")
    parser.add_argument("--http-port", type=int, default=None, help="HTTP port of the OpenAI-compatible API (default 9001)")
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus metrics port, Ray's metrics agent (default 9020)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tessera", description="Elastic text-to-video on Ray Serve.")
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help=f"state folder of the embedded stack (default {DEFAULT_HOME}; env TESSERA_HOME)")
    parser.add_argument("--address", help="gRPC address (default: the embedded stack's)")
    parser.add_argument("--api-key", default=os.environ.get("TESSERA_API_KEY"),
                        help="API key (env TESSERA_API_KEY; default: the embedded stack's, HOME/api_key, for a loopback address)")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start the embedded stack and leave it running")
    _add_stack_options(up)
    up.set_defaults(func=cmd_up)
    commands.add_parser("down", help="stop the embedded stack").set_defaults(func=cmd_down)
    status = commands.add_parser("status", help="health of the embedded stack")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    generate = commands.add_parser("generate", help="render a video and wait for it")
    _add_generation_options(generate)
    generate.set_defaults(func=cmd_generate)

    run = commands.add_parser("run", help="one-shot: start the stack if needed, render, print, stop what it started")
    _add_generation_options(run)
    _add_stack_options(run)
    run.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    run.set_defaults(func=cmd_run)

    jobs = commands.add_parser("jobs", help="manage jobs")
    jobs_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = jobs_commands.add_parser("list", help="newest first")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--page-token")
    listing.add_argument("--state", choices=["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"])
    listing.add_argument("--json", action="store_true")
    for name, text in (("get", "show a job as JSON"), ("watch", "follow a job to its end"), ("cancel", "cancel a job")):
        jobs_commands.add_parser(name, help=text).add_argument("job_id")
    jobs.set_defaults(func=cmd_jobs)

    batch = commands.add_parser("batch", help="render a JSONL/CSV file of requests on the cluster, exactly once per item")
    batch_commands = batch.add_subparsers(dest="batch_command", required=True)
    submit = batch_commands.add_parser("submit", help="validate a batch file and start it (resubmitting resumes it)")
    submit.add_argument("file", help="local or s3:// JSONL (or .csv) file, one request per line")
    submit.add_argument("--name", help="the batch's name (default: from the file name)")
    submit.add_argument("--concurrency", type=int, help="most of its jobs queued or running at once (default 2)")
    submit.add_argument("--priority", type=int, help="priority of its items, -10..10 (default -1: below interactive jobs)")
    submit.add_argument("--output-prefix", help="s3:// prefix for outputs and report (default {tenant}/batches/NAME/)")
    submit.add_argument("--skip-invalid", action="store_true", help="render the valid lines, report the others")
    submit.add_argument("--max-attempts", type=int, help="attempts per item before it fails (default 2)")
    submit.add_argument("--wait", action="store_true", help="follow it with a progress bar until it ends")
    status_cmd = batch_commands.add_parser("status", help="counts and items of a batch")
    status_cmd.add_argument("name")
    status_cmd.add_argument("--watch", action="store_true", help="follow it with a progress bar until it ends")
    status_cmd.add_argument("--json", action="store_true")
    batch_commands.add_parser("list", help="the tenant's batches")
    for name, text in (("cancel", "stop running items, start no queued one"), ("retry", "render the failed items again")):
        sub = batch_commands.add_parser(name, help=text)
        sub.add_argument("name")
        if name == "retry":
            sub.add_argument("--wait", action="store_true")
    results = batch_commands.add_parser("results", help="where the report is (presigned URLs); --download fetches it")
    results.add_argument("name")
    results.add_argument("--download", metavar="DIR", help="download report.html, report.jsonl, summary.json, contact_sheet.png")
    results.add_argument("--videos", action="store_true", help="with --download: every item's video too")
    batch.set_defaults(func=cmd_batch)

    auth = commands.add_parser("auth", help="API keys")
    auth_commands = auth.add_subparsers(dest="auth_command", required=True)
    auth_commands.add_parser("key", help="print the embedded stack's API key (HOME/api_key)")
    new_key = auth_commands.add_parser("new-key", help="make a key, and print the hash a config stores for it")
    new_key.add_argument("--tenant", default="default", help="tenant named in the printed config line")
    hashing = auth_commands.add_parser("hash", help="print the hash of a key (from stdin if not given)")
    hashing.add_argument("key", nargs="?")
    auth.set_defaults(func=cmd_auth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, ValueError, TimeoutError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
