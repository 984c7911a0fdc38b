"""Batch folder mode (vision/batch/): acceptance tests of issue 8 against a small fake engine.

The fake engine thresholds the image (mask + overlay), follows the engine contract
(``to_files()`` / ``to_record()``), and can sleep per item (for the SIGKILL test) and batch.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vision import batch
from vision.imaging import load_image, mask_png, overlay_mask

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
SKIMAGE_NAMES = ("astronaut", "coffee", "chelsea", "camera", "coins", "moon", "rocket", "text", "page",
                 "clock", "immunohistochemistry", "cat")
BAD_FILES = ("empty.jpg", "truncated.jpg", "text.png", "bomb.png")


# ------------------------------------------------------------------------------------------ fake engine


class ThresholdResult:
    def __init__(self, image: np.ndarray, mask: np.ndarray):
        self.image, self.mask = image, mask

    def to_files(self) -> dict:
        return {"mask.png": mask_png(self.mask), "overlay.png": Image.fromarray(overlay_mask(self.image, self.mask))}

    def to_record(self) -> dict:
        return {"score": float(self.mask.mean()), "category": "bright", "size": list(self.image.shape[:2])}


class ThresholdEngine:
    """A "model" loaded once per worker: thresholds the grey level at ``level``."""

    loads = 0

    def __init__(self, level: int = 128, sleep: float = 0.0):
        ThresholdEngine.loads += 1
        self.level, self.sleep = level, sleep
        self.batches: list[int] = []

    def process(self, item: batch.Item) -> ThresholdResult:
        image = item.image()
        if self.sleep:
            time.sleep(self.sleep)
        return ThresholdResult(image, image.mean(axis=2) > self.level)

    def process_batch(self, items: list[batch.Item]) -> list:
        self.batches.append(len(items))
        return [self.process(item) for item in items]


def make_engine(level: int = 128, sleep: float = 0.0) -> ThresholdEngine:
    return ThresholdEngine(level, sleep)


def make_plain(level: int = 128):
    """A processor that is a bare callable (no process_batch)."""
    engine = ThresholdEngine(level)
    return engine.process


# ------------------------------------------------------------------------------------------------ data


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png() -> bytes:
    """A PNG whose IHDR claims 100000 x 100000 pixels (a decompression bomb header)."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def make_folder(root: Path, bad: bool = True) -> Path:
    """12 small skimage.data-derived images (JPEG and PNG, two sub-folders) plus 4 bad files."""
    from skimage import data

    from vision.imaging import array_to_rgb

    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(SKIMAGE_NAMES):
        arr = array_to_rgb(getattr(data, name)())
        step = max(1, max(arr.shape[:2]) // 64)
        arr = np.ascontiguousarray(arr[::step, ::step])
        folder = root / ("" if i < 4 else "set_a" if i < 8 else "set_b/deeper")
        folder.mkdir(parents=True, exist_ok=True)
        if i % 2:
            Image.fromarray(arr).save(folder / f"{name}.jpg", quality=90)
        else:
            Image.fromarray(arr).save(folder / f"{name}.png")
    if bad:
        (root / "empty.jpg").write_bytes(b"")
        full = ((root / "coffee.jpg").read_bytes() if (root / "coffee.jpg").exists()
                else (root / "set_a" / "coins.jpg").read_bytes())
        (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
        (root / "text.png").write_text("this is not a PNG, just text\n")
        (root / "set_a" / "bomb.png").write_bytes(bomb_png())
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("batch") / "photos")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tree_hash(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def output_files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("results.jsonl", "errors.jsonl", ".batch.lock")}


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if batch.TMP_TAG in p.name]


def run(dataset: Path, out: Path, **kw) -> batch.Summary:
    kw.setdefault("progress", False)
    factory = kw.pop("factory", make_engine)
    items = kw.pop("items", None) or batch.image_items(dataset, recursive=True)
    return batch.run_batch(items, out, factory, **kw)


# ----------------------------------------------------------------------------------------- acceptance


def test_folder_with_bad_files(dataset, tmp_path):
    before = tree_hash(dataset)
    out = tmp_path / "out"
    summary = run(dataset, out)
    assert (summary.total, summary.done, summary.failed, summary.skipped) == (16, 12, 4, 0)
    assert summary.exit_code != 0
    masks = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mask.png"))
    assert len(masks) == 12 and "set_b/deeper/cat.mask.png" in masks and "astronaut.mask.png" in masks
    errors = read_jsonl(out / "errors.jsonl")
    assert sorted(Path(e["id"]).name for e in errors) == sorted(BAD_FILES)
    reasons = {Path(e["id"]).name: e["reason"] for e in errors}
    assert "empty" in reasons["empty.jpg"] and "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["text.png"] and "bomb" in reasons["bomb.png"]
    rows = read_jsonl(out / "results.jsonl")
    assert len(rows) == 16 and len({r["id"] for r in rows}) == 16
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 12
    for row in ok:
        assert set(row["outputs"]) == {"mask.png", "overlay.png"} and 0 <= row["score"] <= 1
        assert row["input"].startswith(str(dataset)) and row["seconds"] >= 0
        mask = np.asarray(Image.open(out / row["outputs"]["mask.png"]))
        image = load_image(Path(row["input"]))
        assert mask.shape == image.shape[:2] and set(np.unique(mask)) <= {0, 255}
    assert all(r["status"] == "error" and r["reason"] for r in rows if r["status"] != "ok")
    assert tree_hash(dataset) == before, "inputs must never be modified"
    assert not temp_files(out)

    # Rerun: everything complete is skipped, bad files are retried (and fail again), no duplicate lines.
    again = run(dataset, out)
    assert (again.done, again.skipped, again.failed) == (0, 12, 4) and again.exit_code == 1
    rows = read_jsonl(out / "results.jsonl")
    assert len(rows) == 16 and len({r["id"] for r in rows}) == 16
    assert len(read_jsonl(out / "errors.jsonl")) == 4


KILL_SCRIPT = textwrap.dedent("""
    import functools, sys
    sys.path.insert(0, {tests!r})
    from test_batch import make_engine
    from vision import batch
    items = batch.image_items({src!r}, recursive=True)
    summary = batch.run_batch(items, {out!r}, functools.partial(make_engine, sleep={sleep}), progress=False)
    sys.exit(summary.exit_code)
""")


def start_slow_run(dataset: Path, out: Path, tmp_path: Path, sleep: float) -> subprocess.Popen:
    """A run of the fake engine over ``dataset`` in another process, ``sleep`` seconds per image."""
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(tests=str(TESTS), src=str(dataset), out=str(out), sleep=sleep))
    return subprocess.Popen([sys.executable, str(script)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for_lines(path: Path, count: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"runner ended early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    pytest.fail(f"no {count} lines in {path} after {timeout} s")


def test_sigkill_then_resume(dataset, tmp_path):
    out = tmp_path / "out"
    proc = start_slow_run(dataset, out, tmp_path, sleep=0.25)
    results = out / "results.jsonl"
    wait_for_lines(results, 4, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stderr.close()
    first = read_jsonl(results)
    assert 4 <= len(first) < 16, "the kill must land mid-run"
    assert len(list(out.glob(".batch.run.*.lock"))) == 1, "the killed run's claim is left behind"

    # Leave the debris a kill can leave: a temp file of a dead writer and a half-written last line.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".coins.mask.png.{batch.host_tag()}-{dead.pid}{batch.TMP_TAG}"
    stale.write_bytes(b"\x89PNG half")
    with open(results, "ab") as handle:
        handle.write(b'{"id": "clock.png", "status": "o')

    rerun = subprocess.run([sys.executable, str(tmp_path / "run.py")], cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert rerun.returncode == 1, rerun.stderr[-2000:]  # the 4 bad files
    assert "skipped" in rerun.stderr
    rows = read_jsonl(results)  # every line parses: the torn line is gone
    ids = [r["id"] for r in rows]
    assert len(ids) == 16 and len(set(ids)) == 16, "no item twice in results.jsonl"
    assert sum(r["status"] == "ok" for r in rows) == 12
    assert len(read_jsonl(out / "errors.jsonl")) == 4
    assert not temp_files(out), "no temp files remain"
    assert not list(out.glob(".batch.run.*.lock")), "the dead run's claim was taken over, then released"
    for row in rows:
        for rel in row["outputs"].values():
            with Image.open(out / rel) as image:
                image.load()  # every output is a valid, complete image
    assert len(list(out.rglob("*.mask.png"))) == 12


def test_shards_cover_every_item_once(dataset, tmp_path):
    items = batch.image_items(dataset, recursive=True)
    parts = [batch.select_shard(items, f"{i}/2") for i in range(2)]
    assert sorted(i.id for p in parts for i in p) == sorted(i.id for i in items)
    assert not {i.id for i in parts[0]} & {i.id for i in parts[1]}
    assert [i.id for i in batch.select_shard(items, "0/2")] == [i.id for i in parts[0]]  # deterministic
    assert all(parts) and batch.select_shard(items, "0/1") == items

    out = tmp_path / "out"
    s0, s1 = run(dataset, out, shard="0/2"), run(dataset, out, shard="1/2")
    assert s0.total + s1.total == 16 and s0.done + s1.done == 12 and s0.failed + s1.failed == 4
    rows = read_jsonl(out / "results.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(i.id for i in items)
    # A later unsharded run finds everything done (bad files are retried only).
    whole = run(dataset, out)
    assert whole.skipped == 12 and whole.done == 0
    assert len(read_jsonl(out / "results.jsonl")) == 16

    for bad in ("2/2", "1", "a/b", "0/0", "-1/2"):
        with pytest.raises(batch.BatchError):
            batch.parse_shard(bad)


def test_concurrent_shards_share_an_output_folder(dataset, tmp_path):
    out = tmp_path / "out"
    script = tmp_path / "shard.py"
    script.write_text(textwrap.dedent(f"""
        import functools, sys
        sys.path.insert(0, {str(TESTS)!r})
        from test_batch import make_engine
        from vision import batch
        items = batch.image_items({str(dataset)!r}, recursive=True)
        s = batch.run_batch(items, {str(out)!r}, functools.partial(make_engine, sleep=0.02), shard=sys.argv[1],
                            progress=False)
        sys.exit(s.exit_code)
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, str(script), f"{i}/2"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
    codes = [p.wait(timeout=120) for p in procs]
    assert set(codes) <= {0, 1} and 1 in codes  # the shard(s) holding the bad files fail
    rows = read_jsonl(out / "results.jsonl")
    assert len(rows) == 16 and len({r["id"] for r in rows}) == 16


def test_a_second_run_on_a_folder_in_use_stops_at_once(dataset, tmp_path, capsys):
    """Two runs over the same items into one folder would both proceed and write every line twice."""
    out = tmp_path / "out"
    first = start_slow_run(dataset, out, tmp_path, sleep=0.2)
    try:
        wait_for_lines(out / "results.jsonl", 1, first)
        loads = ThresholdEngine.loads
        for shard in (None, "0/2", "1/3"):  # the whole folder, or any shard of it: all overlap the first run
            start = time.monotonic()
            with pytest.raises(batch.OutputInUseError) as caught:
                run(dataset, out, shard=shard)
            assert time.monotonic() - start < 5, "it stops at once"
            assert f"PID {first.pid} on host {socket.gethostname()}" in str(caught.value)
        assert ThresholdEngine.loads == loads, "no engine was started"
        args = cli_parser().parse_args(["-i", str(dataset), "-o", str(out), "-r", "--no-progress"])
        assert batch.run_from_args(args, make_engine) == 2
        err = capsys.readouterr().err
        assert f"PID {first.pid}" in err and "in use by another run" in err
        assert first.wait(timeout=60) == 1, "the first run finishes undisturbed (its 4 bad files fail)"
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()
        first.stderr.close()
    rows = read_jsonl(out / "results.jsonl")
    assert len(rows) == 16 and len({r["id"] for r in rows}) == 16
    assert len(read_jsonl(out / "errors.jsonl")) == 4
    assert not list(out.glob(".batch.run.*.lock")), "a finished run releases its claim"
    assert run(dataset, out).skipped == 12  # the folder is free again


def test_shards_of_one_split_share_a_folder_and_dead_claims_are_taken_over(dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with batch.RunLock(out, (0, 2)):  # a live run of shard 0/2 (this process)
        assert run(dataset, out, shard="1/2").total > 0
        for shard in (None, "0/2", "0/3"):
            with pytest.raises(batch.OutputInUseError, match=f"PID {os.getpid()} .*shard 0/2"):
                run(dataset, out, shard=shard)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".batch.run.{batch.host_tag()}-{dead.pid}-0.lock"
    stale.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "shard": None, "started": "x"}))
    summary = run(dataset, out)  # the lock of a dead process does not hold the folder
    assert summary.total == 16 and not stale.exists()


# ----------------------------------------------------------------------------------------------- safety


def test_paths_never_escape_the_output_folder(tmp_path):
    src = make_folder(tmp_path / "in", bad=False)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = tmp_path / "secret.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(secret)
    # Symlinks in the input: to a file outside (not followed), to a folder (not entered), inside (used).
    (src / "escape.png").symlink_to(secret)
    (src / "linked_dir").symlink_to(outside, target_is_directory=True)
    (src / "alias.jpg").symlink_to(src / "camera.jpg")
    items = batch.image_items(src, recursive=True)
    ids = {i.id for i in items}
    assert "escape.png" not in ids and not any(i.startswith("linked_dir") for i in ids)
    assert "alias.jpg" in ids and len(items) == 13

    out = tmp_path / "out"
    out.mkdir()
    (out / "set_a").symlink_to(outside, target_is_directory=True)  # a link planted in the output tree
    evil = [batch.Item(id="../../evil.png", index=100, path=src / "camera.jpg", stem="../../evil"),
            batch.Item(id="abs.png", index=101, path=src / "camera.jpg", stem="/tmp/abs")]
    summary = batch.run_batch([*items, *evil], out, make_engine, input_root=src, progress=False)
    assert not list(outside.iterdir()), "nothing may be written through a symlink out of the output folder"
    assert not (tmp_path / "evil.mask.png").exists() and not Path("/tmp/abs.mask.png").exists()
    errors = {e["id"]: e["reason"] for e in read_jsonl(out / "errors.jsonl")}
    assert "../../evil.png" in errors and "abs.png" in errors
    assert all(i in errors for i in ids if i.startswith("set_a/"))
    assert summary.done == 13 - 4 and summary.failed == 6
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(out.resolve()) or path == out / "set_a"

    # An engine cannot escape through its suffixes either.
    class Sneaky:
        def to_files(self):
            return {"../../../pwned.png": np.zeros((4, 4), bool)}

        def to_record(self):
            return {}

    out2 = tmp_path / "out2"
    s = batch.run_batch(items[:1], out2, lambda: (lambda item: Sneaky()), input_root=src, progress=False)
    assert s.failed == 1 and "unsafe output suffix" in read_jsonl(out2 / "errors.jsonl")[0]["reason"]
    assert not list(tmp_path.rglob("pwned.png"))


def test_output_folder_inside_input_folder(tmp_path):
    src = make_folder(tmp_path / "in", bad=False)
    before = tree_hash(src)
    with pytest.raises(batch.BatchError, match="inside the input folder"):
        run(src, src / "masks")
    with pytest.raises(batch.BatchError, match="is the input folder"):
        run(src, src)
    # Allowed on request; the output folder is then never read as input (also on a rerun).
    out = src / "masks"
    items = batch.image_items(src, recursive=True, exclude=out)
    s = batch.run_batch(items, out, make_engine, allow_output_inside_input=True, input_root=src, progress=False)
    assert s.done == 12
    items = batch.image_items(src, recursive=True, exclude=out)
    assert len(items) == 12 and not any(i.id.startswith("masks/") for i in items)
    s = batch.run_batch(items, out, make_engine, allow_output_inside_input=True, input_root=src, progress=False)
    assert s.skipped == 12
    assert {k: v for k, v in tree_hash(src).items() if not k.startswith("masks/")} == before


def test_never_writes_into_the_input_folder_when_it_is_inside_the_output(tmp_path):
    out = tmp_path / "out"
    src = out / "photos"
    (src / "photos").mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(src / "photos" / "a.png")
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(src / "b.png")
    before = tree_hash(src)
    s = batch.run_batch(batch.image_items(src, recursive=True), out, make_engine, input_root=src, progress=False)
    # "photos/a.png" would map to out/photos/a.mask.png, inside the input folder: refused.
    assert s.done == 1 and s.failed == 1
    assert tree_hash(src) == before


# -------------------------------------------------------------------------------------------- features


def test_batch_size_and_bad_files_in_a_batch(dataset, tmp_path):
    engines: list[ThresholdEngine] = []

    def factory():
        engines.append(ThresholdEngine())
        return engines[-1]

    s = run(dataset, tmp_path / "out", factory=factory, batch_size=4)
    assert (s.done, s.failed) == (12, 4) and len(engines) == 1, "the model is loaded once"
    assert max(engines[0].batches) > 1 and sum(engines[0].batches) == 12, "bad files never reach the batch"
    assert output_files(tmp_path / "out") == output_files(_reference(dataset, tmp_path))

    class Flaky(ThresholdEngine):
        def process_batch(self, items):
            raise RuntimeError("batch kernel failed")

    s = run(dataset, tmp_path / "out2", factory=Flaky, batch_size=5)
    assert (s.done, s.failed) == (12, 4), "a failed batch falls back to one item at a time"


def _reference(dataset: Path, tmp_path: Path) -> Path:
    out = tmp_path / "reference"
    if not out.exists():
        run(dataset, out)
    return out


def test_plain_callable_skip_and_engine_errors(dataset, tmp_path):
    def factory():
        def process(item):
            if "coffee" in item.id:
                raise batch.Skip("nothing to segment")
            if "moon" in item.id:
                raise RuntimeError("CUDA out of memory (pretend)")
            return make_plain()(item)
        return process

    out = tmp_path / "out"
    s = run(dataset, out, factory=factory)
    assert (s.done, s.skipped, s.failed) == (10, 1, 5)
    rows = {r["id"]: r for r in read_jsonl(out / "results.jsonl")}
    assert rows["coffee.jpg"]["status"] == "skipped" and rows["coffee.jpg"]["reason"] == "nothing to segment"
    assert rows["set_a/moon.jpg"]["error"] == "RuntimeError"
    errors = {e["id"]: e for e in read_jsonl(out / "errors.jsonl")}
    assert "pretend" in errors["set_a/moon.jpg"]["traceback"] and "traceback" not in errors["empty.jpg"]
    s = run(dataset, out, factory=factory)
    assert (s.done, s.skipped, s.failed) == (0, 11, 5), "skipped items are complete; errors are retried"
    assert len(read_jsonl(out / "results.jsonl")) == 16


def test_engine_that_cannot_start(dataset, tmp_path, capsys):
    def factory():
        raise FileNotFoundError("weights/sam_b/sam_vit_b_01ec64.pth is missing")

    with pytest.raises(batch.EngineStartError, match="sam_vit_b"):
        run(dataset, tmp_path / "out", factory=factory)
    args = cli_parser().parse_args(["-i", str(dataset), "-o", str(tmp_path / "out"), "--no-progress"])
    assert batch.run_from_args(args, factory) == 2
    assert "could not start the engine" in capsys.readouterr().err


def test_settings_change_and_overwrite_redo_items(dataset, tmp_path):
    out = tmp_path / "out"
    assert run(dataset, out, settings={"level": 128}).done == 12
    assert run(dataset, out, settings={"level": 128}).skipped == 12
    redo = run(dataset, out, settings={"level": 64}, factory=functools.partial(make_engine, level=64))
    assert redo.done == 12 and redo.skipped == 0
    assert run(dataset, out, settings={"level": 64}, overwrite=True).done == 12
    rows = read_jsonl(out / "results.jsonl")
    assert len(rows) == 16 and len({r["id"] for r in rows}) == 16
    # A deleted output makes its item incomplete again.
    (out / "camera.mask.png").unlink()
    again = run(dataset, out, settings={"level": 64})
    assert again.done == 1 and (out / "camera.mask.png").exists()


def test_same_stem_and_odd_names(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    img = np.full((6, 6, 3), 220, np.uint8)
    for name in ("cat.jpg", "cat.png", "UPPER.JPG", "with space.png", "dots.v2.png", ".hidden.png", "notes.txt"):
        if name.endswith("txt"):
            (src / name).write_text("x")
        else:
            Image.fromarray(img).save(src / name)
    items = batch.image_items(src)
    assert [i.id for i in items] == ["UPPER.JPG", "cat.jpg", "cat.png", "dots.v2.png", "with space.png"]
    assert [i.stem for i in items] == ["UPPER", "cat.jpg", "cat.png", "dots.v2", "with space"]
    s = batch.run_batch(items, tmp_path / "out", make_engine, progress=False)
    assert s.done == 5
    assert (tmp_path / "out" / "cat.jpg.mask.png").exists() and (tmp_path / "out" / "cat.png.mask.png").exists()
    assert [i.id for i in batch.image_items(src, extensions=".png")] == ["cat.png", "dots.v2.png", "with space.png"]
    single = batch.image_items(src / "cat.png")
    assert [i.id for i in single] == ["cat.png"]
    with pytest.raises(batch.BatchError):
        batch.image_items(src / "missing")


def test_a_file_name_that_is_not_utf8_round_trips_escaped_and_never_stops_a_run(tmp_path, capsys):
    """Issue 20.1: a file named with the bytes chat_\\xe9\\xff.png stopped every run (UnicodeEncodeError in
    the results writer), so the files after it were never processed."""
    raw_name = b"chat_\xe9\xff.png"
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", os.fsdecode(raw_name), "z.png"):  # the odd one sorts between the others
        Image.fromarray(np.full((6, 6, 3), 220, np.uint8)).save(src / name)
    out = tmp_path / "out"
    summary = run(src, out)
    assert (summary.done, summary.failed) == (3, 0)
    assert (out / os.fsdecode(b"chat_\xe9\xff.mask.png")).is_file()  # the output keeps the name's bytes
    text = (out / "results.jsonl").read_bytes().decode("utf-8")  # the results file is valid UTF-8
    rows = [json.loads(line) for line in text.splitlines()]
    odd = next(r for r in rows if r["id"].startswith("chat_"))
    assert os.fsencode(odd["id"]) == raw_name  # lossless: the JSON escapes give the bytes back
    assert "\\udce9\\udcff" in text  # written as escapes, one per undecodable byte
    assert "not valid UTF-8" in odd["name_note"] and "os.fsencode" in odd["name_note"]  # and said so
    assert "name_note" not in next(r for r in rows if r["id"] == "a.png")
    assert run(src, out).skipped == 3  # a rerun finds every item complete, the odd one included
    shards = [item.id for i in range(2) for item in batch.select_shard(batch.image_items(src), f"{i}/2")]
    assert sorted(shards) == sorted(r["id"] for r in rows)  # and it has a shard like every other name


def test_an_item_whose_commit_fails_is_a_failure_not_the_end_of_the_run(dataset, tmp_path, monkeypatch):
    original = batch.Writer.commit

    def commit(self, item, outcome):
        if item.id == "coffee.jpg":
            raise OSError(28, "No space left on device")
        return original(self, item, outcome)

    monkeypatch.setattr(batch.Writer, "commit", commit)
    summary = run(dataset, tmp_path / "out")
    assert summary.done == 11 and summary.failed == 5  # 4 bad files and the item that could not be written
    assert ("coffee.jpg", "OSError: [Errno 28] No space left on device") in summary.failures


def test_prompt_items_and_text_outputs(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox in the snow\n\n# a comment\n"
                       "{\"prompt\": \"A castle!\", \"seed\": 7}\na red fox in the snow\n")
    items = batch.prompt_items(prompts)
    assert [i.id for i in items] == ["00001-a-red-fox-in-the-snow", "00004-a-castle", "00005-a-red-fox-in-the-snow"]
    assert items[1].params == {"prompt": "A castle!", "seed": 7} and items[1].text == "A castle!"

    def factory():
        def process(item):
            seed = item.params.get("seed", item.index)
            rng = np.random.default_rng(seed)
            return batch.BatchResult({"png": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "txt": item.load(),
                                      "json": {"seed": seed}}, {"prompt": item.text, "seed": seed})
        return process

    out = tmp_path / "out"
    s = batch.run_batch(items, out, factory, progress=False)
    assert s.done == 3 and s.unit == "prompts"
    assert (out / "00004-a-castle.txt").read_text() == "A castle!"
    assert json.loads((out / "00004-a-castle.json").read_text()) == {"seed": 7}
    assert Image.open(out / "00001-a-red-fox-in-the-snow.png").size == (8, 8)
    rows = read_jsonl(out / "results.jsonl")
    assert rows[1]["prompt"] == "A castle!" and rows[1]["input"] == "A castle!"
    with pytest.raises(batch.BatchError):
        batch.prompt_items(["{not json"])


def test_coco_json(dataset, tmp_path):
    mask_utils = pytest.importorskip("pycocotools.mask", reason="pycocotools is not installed")
    out = tmp_path / "out"
    s = run(dataset, out, coco_json="coco.json")
    assert s.done == 12
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["images"]) == 12 and coco["categories"] == [{"id": 1, "name": "bright"}]
    assert len(coco["annotations"]) == 12
    for ann in coco["annotations"]:
        mask = np.asarray(Image.open(out / ann["output"])) > 0
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
        assert np.array_equal(mask_utils.decode(rle).astype(bool), mask)
        assert ann["area"] == mask.sum()
    with pytest.raises(batch.BatchError):
        run(dataset, out, coco_json="../coco.json")


def test_label_maps_in_coco_json(tmp_path):
    pytest.importorskip("pycocotools.mask", reason="pycocotools is not installed")
    from vision.imaging import label_png

    src = make_folder(tmp_path / "in", bad=False)

    def factory():
        def process(item):
            grey = item.image().mean(axis=2)
            labels = np.digitize(grey, [85, 170]).astype(np.uint8)  # 0, 1, 2
            return batch.BatchResult({"labels.png": label_png(labels)}, {"classes": ["background", "mid", "bright"]})
        return process

    out = tmp_path / "out"
    batch.run_batch(batch.image_items(src, recursive=True), out, factory, coco_json="coco.json", progress=False)
    coco = json.loads((out / "coco.json").read_text())
    assert {c["name"] for c in coco["categories"]} <= {"mid", "bright"} and len(coco["images"]) == 12
    assert Image.open(out / "camera.labels.png").mode == "P"


def test_instance_masks_in_coco_json(tmp_path):
    pytest.importorskip("pycocotools.mask", reason="pycocotools is not installed")
    src = make_folder(tmp_path / "in", bad=False)

    def factory():
        def process(item):
            grey = item.image().mean(axis=2)
            a, b = grey > 170, (grey > 60) & (grey <= 170)
            return batch.BatchResult({"mask.png": a | b, "dog_0.inst.png": a, "dog_1.inst.png": b}, {"category": "dog"})
        return process

    out = tmp_path / "out"
    batch.run_batch(batch.image_items(src, recursive=True), out, factory, coco_json="sub/coco.json", progress=False)
    coco = json.loads((out / "sub" / "coco.json").read_text())
    assert coco["categories"] == [{"id": 1, "name": "dog"}]
    assert len(coco["annotations"]) == 24 and all(a["output"].endswith(".inst.png") for a in coco["annotations"])


def test_progress_bar_and_summary(dataset, tmp_path, capsys):
    run(dataset, tmp_path / "out", progress=True)
    err = capsys.readouterr().err
    assert "image/s" in err or "s/image" in err
    assert "12 done, 0 skipped, 4 failed of 16" in err and "errors.jsonl" in err


# ------------------------------------------------------------------------------------------------- CLI


def cli_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default=argparse.SUPPRESS)  # as vision.cli adds it to every subcommand
    parser.add_argument("--level", type=int, default=128)
    batch.add_batch_arguments(parser)
    return parser


def cli_run(argv: list[str]) -> int:
    args = cli_parser().parse_args(argv)
    return batch.run_from_args(args, functools.partial(make_engine, level=args.level), settings={"level": args.level})


def test_cli_helpers(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_run(["--input", str(dataset), "--output", str(out), "--no-progress"]) == 1
    assert len(list(out.rglob("*.mask.png"))) == 4, "not recursive by default"
    assert cli_run(["-i", str(dataset), "-o", str(out), "-r", "--no-progress", "--ext", "png"]) == 1
    assert len(list(out.rglob("*.mask.png"))) == 4 + 4  # the other PNGs (bomb.png and text.png fail)
    out2 = tmp_path / "out2"
    codes = [cli_run(["-i", str(dataset), "-o", str(out2), "-r", "--no-progress", "--shard", f"{i}/2",
                      "--batch-size", "3"]) for i in range(2)]
    assert set(codes) <= {0, 1} and 1 in codes
    assert len(list(out2.rglob("*.mask.png"))) == 12
    assert cli_run(["-i", str(dataset), "-o", str(dataset / "x"), "--no-progress"]) == 2
    assert cli_run(["-i", str(dataset), "-o", str(out2), "--shard", "3/2"]) == 2
    assert cli_run(["-i", str(tmp_path / "nope"), "-o", str(out2)]) == 2
    err = capsys.readouterr().err
    assert "inside the input folder" in err and "--shard" in err and "no such file" in err
    # Options the engine already has are left alone; --device is added when absent.
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", "-o", dest="output", required=True)
    batch.add_batch_arguments(parser)
    args = parser.parse_args(["-o", "x", "--device", "cpu", "--ray", "--coco-json"])
    assert args.device == "cpu" and args.ray and args.coco_json == "coco.json" and args.batch_size == 1


# ------------------------------------------------------------------------------------------------- Ray


def test_ray_runner_matches_local_runner(tmp_path):
    ok, why = __import__("vision.batch.ray_runner", fromlist=["available"]).available()
    if not ok:
        pytest.skip(f"Ray runner not tested: {why}")
    src = make_folder(tmp_path / "in")
    Image.fromarray(np.full((6, 6, 3), 220, np.uint8)).save(src / os.fsdecode(b"chat_\xe9\xff.png"))  # not UTF-8
    local, remote = tmp_path / "local", tmp_path / "ray"
    s_local = run(src, local, batch_size=2)
    s_ray = run(src, remote, batch_size=2, ray=True,
                ray_options={"init": {"num_cpus": 2}, "num_actors": 2, "num_gpus": 0})
    assert (s_ray.done, s_ray.failed) == (s_local.done, s_local.failed) == (13, 4)
    assert output_files(local) == output_files(remote), "a Ray run writes the same files as a local run"

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert strip(read_jsonl(local / "results.jsonl")) == strip(read_jsonl(remote / "results.jsonl"))
    assert read_jsonl(local / "errors.jsonl") == read_jsonl(remote / "errors.jsonl")
    assert not temp_files(remote)
