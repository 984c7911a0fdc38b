"""Peak memory of a video run against the video's length: a 300-frame 480p clip beside a 30-frame one.

    python -m vision bench video_memory [--frames 30 300] [--tracks sam2 exemplar] [--models tiny|full]

Each run is a fresh process (``--child``) that does what ``python -m vision video`` does
(:func:`vision.batch.video.run_video`: decoding, the engine, one mask PNG and results line per frame, the
overlay mp4) on the synthetic clip (:mod:`vision.evaluation.synthetic_video`) at 854x480, written as an
H.264 mp4, and reports its peak resident memory (``VmHWM``). The goal (issue 23): peak RSS of the
300-frame run within 1.2x of the 30-frame one, per track.

``--models tiny``: the tiny random models (the pipeline's own memory: decoding, SAM 2's session, writing).
``--models full``: SAM 2.1 Hiera-Tiny's full-size architecture with random weights for ``sam2`` and the
real ``sam_t`` for ``exemplar`` (weights/sam_t). Results go to ``bench/results/video_memory.{json,md}``
with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZE = (480, 854)  # 480p, 16:9


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(args: argparse.Namespace) -> int:
    """One run in this process; prints {"peak_rss_mb", "seconds", "frames"} as JSON."""
    import torch

    from vision.batch.video import run_video
    from vision.engines.ipseg import Prompt
    from vision.engines.video import VideoConfig, VideoEngine, VideoPrompt
    from vision.evaluation.synthetic_video import synthetic_clip
    from vision.hub import ModelHub

    torch.set_num_threads(args.threads)
    hub = ModelHub(tiny=args.models == "tiny", device="cpu")
    if args.models == "full" and args.track == "sam2":
        from transformers import Sam2VideoConfig, Sam2VideoModel

        hub.put("sam2_tiny", Sam2VideoModel(Sam2VideoConfig()).eval())  # Hiera-Tiny's layout, random weights
    if args.track == "sam2":
        config, prompt = VideoConfig.from_preset("sam2"), VideoPrompt(points=[(0.28 * SIZE[1], 0.5 * SIZE[0])])
    else:
        small = synthetic_clip(2, size=(240, 320))
        config = VideoConfig.from_preset("fast")
        prompt = VideoPrompt(exemplar=Prompt(small.exemplar, mask=small.exemplar_mask))
    start = time.perf_counter()
    summary = run_video(VideoEngine(config, hub=hub), args.clip, prompt, args.out, log=lambda _: None)
    print(json.dumps({"peak_rss_mb": round(_peak_rss_mb(), 1), "seconds": round(time.perf_counter() - start, 1),
                      "frames": summary.done, "failed": summary.failed}))
    return 0


def write_clip(path: Path, frames: int) -> Path:
    from vision.evaluation.synthetic_video import synthetic_clip
    from vision.videoio import write_video

    return write_video(synthetic_clip(frames, size=SIZE).frames, path, fps=24)


def main(argv: list[str] | None = None) -> int:
    from vision.wording import vision_command

    parser = argparse.ArgumentParser(prog=vision_command("bench", "video_memory"), description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs=2, default=(30, 300), metavar=("SHORT", "LONG"))
    parser.add_argument("--tracks", nargs="+", choices=("sam2", "exemplar"), default=["sam2", "exemplar"])
    parser.add_argument("--models", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "video_memory.md"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clip", help=argparse.SUPPRESS)
    parser.add_argument("--track", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    from bench.common import machine

    before = machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="video-memory-") as tmp:
        clips = {n: write_clip(Path(tmp) / f"clip{n}.mp4", n) for n in args.frames}
        for track in args.tracks:
            runs = {}
            for n, clip in clips.items():
                command = [sys.executable, "-m", "vision", "bench", "video_memory", "--child", "--clip", str(clip),
                           "--track", track, "--models", args.models, "--threads", str(args.threads),
                           "--out", str(Path(tmp) / f"out-{track}-{n}")]
                done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"{track} {n} frames failed:\n{done.stderr[-3000:]}")
                runs[n] = json.loads(done.stdout.strip().splitlines()[-1])
                print(track, n, runs[n], flush=True)
            short, long = args.frames
            rows.append({"track": track, **{f"{k}_{n}": v for n, r in runs.items() for k, v in r.items()},
                         "ratio": round(runs[long]["peak_rss_mb"] / runs[short]["peak_rss_mb"], 3)})
    after = machine()
    report = {"models": args.models, "size": SIZE, "frames": args.frames, "rows": rows, "machine": before,
              "load_after": after.get("load_average"), "command": "python -m vision bench video_memory "
              + " ".join(argv or [])}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.write_text(_markdown(report))
    print(out.read_text())
    return 0


def _markdown(report: dict) -> str:
    short, long = report["frames"]
    m = report["machine"]
    lines = [f"# Video memory: peak RSS of a {long}-frame 480p run beside a {short}-frame one", "",
             f"- machine: `{m['uname']}`; CPU: {m['cpu']} ({m['cpu_count']} logical CPUs); torch {m['torch']}",
             f"- load average before: {m.get('load_average')}; after: {report['load_after']}",
             (f"- models: {report['models']}; clip: synthetic, {report['size'][1]}x{report['size'][0]}, "
              "H.264 mp4, 24 fps"),
             ("- each run a fresh process doing what `python -m vision video` does (masks, results.jsonl, "
              "overlay.mp4); peak = VmHWM"), f"- command: `{report['command']}`", "",
             (f"| track | peak RSS {short} frames (MB) | peak RSS {long} frames (MB) | ratio (goal <= 1.2) | "
              f"seconds {short} / {long} |"), "|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['track']} | {row[f'peak_rss_mb_{short}']} | {row[f'peak_rss_mb_{long}']} | "
                     f"**{row['ratio']}** | {row[f'seconds_{short}']} / {row[f'seconds_{long}']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
