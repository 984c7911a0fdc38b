"""Every command of README.md, run as written (issue 15, item 2).

The commands are read from the README's ``bash`` blocks. Apart from the set-up block (it creates the
venv, which this test runs in), each must run from the project folder right after the set-up command,
so each starts with ``.venv/bin/python``. How each one runs here:

* ``-m vision`` commands over inputs (ipseg, trident, segment, eval, generate, story) run in tiny mode,
  in-process (``vision.cli.main`` with the words after ``-m vision``: the models are built once), in a
  folder that holds the inputs the README names, made from skimage.data photos; every run must succeed.
  The ``eval synthetic`` commands write datasets other commands read: they run first, when that folder
  is made.
* ``--help`` and ``weights download`` run through bash from the project folder, exactly as written (the
  set-up's own form: a fresh ``.venv/bin/python`` process); the download (gigabytes of weights) with every
  server unreachable: its failure message is checked instead. ``weights list`` runs in-process.
* Benchmarks are long runs on full-size architectures (not tests): each README line runs with ``--help``.
* The app's line is a synopsis (``[--tiny] [--host ...]``): ``app.py --help`` (its parser, in-process) must
  list each option.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vision import batch, weights
from vision.cli import main

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ".venv/bin/python"
VISION = [VENV_PYTHON, "-m", "vision"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def readme_blocks() -> list[list[str]]:
    """The commands of each ``bash`` block (continuation lines joined, comments dropped)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = []
    for body in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", body)
        blocks.append([re.sub(r"\s+#\s.*$", "", line).strip() for line in joined.splitlines()
                       if line.strip() and not line.lstrip().startswith("#")])
    return blocks


def readme_commands() -> list[str]:
    return [command for block in readme_blocks() if not any("python3 -m venv" in c for c in block)
            for command in block]


def test_the_readme_has_commands_and_a_set_up_block():
    setup = [block for block in readme_blocks() if any("python3 -m venv .venv" in c for c in block)]
    assert setup, "the set-up block creates .venv"
    commands = readme_commands()
    assert len(commands) >= 10
    wrong = [c for c in commands if not c.startswith(VENV_PYTHON + " ")]
    assert not wrong, f"commands that do not run as written after the set-up (no {VENV_PYTHON}): {wrong}"


def test_every_path_the_readmes_name_exists():
    """Modules that became packages (vision/engines/ipseg/, vision/batch/, ...) left stale pointers."""
    for readme in (ROOT / "README.md", ROOT / "weights" / "README.md"):
        text = readme.read_text(encoding="utf-8")
        paths = set(re.findall(r"\b((?:vision|bench|tests)/[\w./-]*\w/?)", text))
        assert paths, readme
        missing = sorted(p for p in paths if not (ROOT / p).exists())
        assert not missing, f"{readme.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_the_weights_readme_lists_every_model_and_its_files():
    text = (ROOT / "weights" / "README.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (\w+) \| ([^|]+) \|", text, flags=re.M)}
    for name, spec in weights.REGISTRY.items():
        assert name in rows, f"weights/README.md has no row for {name}"
        assert all(file in rows[name] for file in spec.files), (name, spec.files, rows[name])


def test_the_defaults_and_limits_the_readme_states_are_the_code_s():
    from vision.engines.generate import GenerateConfig
    from vision.limits import MAX_SIDE, MAX_STEPS

    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert f"({GenerateConfig().scheduler} by default; steps 1-{MAX_STEPS}, sizes up to {MAX_SIDE} px)" in text
    assert f"N={GenerateConfig().deepcache}, branch {GenerateConfig().branch} by default" in text
    from vision.engines.story import StoryConfig

    assert f"the paper runs {StoryConfig().rounds} rounds, the default" in text


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder with the inputs the README's commands name: the shipped ``examples/`` and a stand-in VOC."""
    from skimage import data

    from vision.imaging import array_to_rgb

    def photo(name: str, side: int = 128) -> Image.Image:
        image = Image.fromarray(array_to_rgb(getattr(data, name)()))
        image.thumbnail((side, side))
        return image

    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "examples", root / "examples")  # the inputs the repository ships, as they are
    voc = root / "VOCdevkit" / "VOC2012"  # a benchmark the user downloads: a one-image stand-in
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    photo("chelsea").save(voc / "JPEGImages" / "2008_000001.jpg")
    labels = np.zeros((85, 128), np.uint8)
    labels[20:70, 30:100] = 8  # VOC's "cat"
    labels[18:20] = 255  # the ignored border
    Image.fromarray(labels, mode="L").save(voc / "SegmentationClass" / "2008_000001.png")
    (voc / "ImageSets/Segmentation/val.txt").write_text("2008_000001\n")
    from vision import tiny
    from vision.tiny_files import write_lora, write_sd_checkpoint

    write_sd_checkpoint(root / "my_sd15.safetensors", tiny.sd15_unet(), tiny.sd15_vae(), tiny.sd15_text_encoder())
    write_lora(root / "ink.safetensors", tiny.sd15_unet())  # the Generate examples' checkpoint, LoRA and sketch
    photo("coffee").save(root / "sketch.png")
    from vision.evaluation.synthetic_video import synthetic_clip
    from vision.videoio import write_video

    clip = synthetic_clip(4, size=(96, 128))  # the video commands' clip and its exemplar
    write_video(clip.frames, root / "clip.mp4", fps=12)
    Image.fromarray(clip.exemplar).save(root / "cup.png")
    Image.fromarray(clip.exemplar_mask.astype(np.uint8) * 255).save(root / "cup_mask.png")
    photo("astronaut", 64).save(root / "knight.png")  # the story command's character
    with pytest.MonkeyPatch.context() as patch:  # the datasets the eval commands read
        patch.chdir(root)
        for command in _commands("dataset"):
            words = shlex.split(command)[3:]
            assert main(words) == 0, command
            assert any((root / words[words.index("--root") + 1]).rglob("*.png")), command
    return root


def _kind(command: str) -> str:
    words = shlex.split(command)
    if words[1] == "app.py":
        return "app"
    assert words[:3] == VISION, command
    rest = words[3:]
    if rest == ["--help"] or rest[:2] == ["weights", "download"]:
        return "shell"
    if rest[:2] == ["weights", "list"]:
        return "listing"
    if rest[:2] == ["eval", "synthetic"]:
        return "dataset"
    return "bench" if rest[:1] == ["bench"] else "engine"


def _commands(kind: str) -> list[str]:
    return [c for c in readme_commands() if _kind(c) == kind]


def _shell(command: str, **env: str) -> subprocess.CompletedProcess:
    if not (ROOT / VENV_PYTHON).exists():
        pytest.skip(f"no {VENV_PYTHON}: run the README's set-up command first")
    return subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


@pytest.mark.parametrize("command", _commands("engine"))
def test_engine_command_runs_as_written(command, inputs, tiny_hub, monkeypatch, capsys):
    monkeypatch.setenv("VISION_TINY", "1")
    monkeypatch.chdir(inputs)
    words = shlex.split(command)[3:]
    assert main(words) == 0, capsys.readouterr().err[-3000:]
    printed = capsys.readouterr().out
    if "--output" in words:
        out = inputs / words[words.index("--output") + 1]
        results = out / "results.jsonl"
        if words[0] == "story":
            assert (out / "storyboard.png").is_file() and (out / "manifest.json").is_file()
        else:
            rows, bad = batch.read_jsonl(results)
            assert rows and not bad and all(r["status"] == "ok" for r in rows)
    if "--out" in words:  # an evaluation harness: per-item lines, its summary and table
        out = inputs / words[words.index("--out") + 1]
        assert (out / "summary.json").is_file() and (out / "table.txt").is_file(), sorted(out.iterdir())
        assert "TINY MODE" in printed
    if words[:2] == ["eval", "trident"]:
        assert "Trident voc21: 1 image," in printed and "TINY MODE" in printed
    if "--compare" in words:
        assert "x faster" in printed


def weights_named(words: list[str]) -> list[str]:
    """The models ``weights download WORDS`` fetches (names, ``--for ENGINE``, ``--for all``), in order."""
    engines = [words[i + 1] for i, w in enumerate(words) if w == "--for"]
    engines = list(weights.ENGINES) if "all" in engines else engines
    names = [w for i, w in enumerate(words) if not w.startswith("--") and (i == 0 or words[i - 1] != "--for")]
    return sorted(dict.fromkeys(names + [n for e in engines for n in weights.models_for(e)]),
                  key=list(weights.REGISTRY).index)


def test_the_shipped_examples_are_small_and_outputs_are_git_ignored():
    """#20.8: the README's inputs did not exist (now ``examples/``, under 1 MB) and ``out/`` was not ignored."""
    size = sum(p.stat().st_size for p in (ROOT / "examples").rglob("*") if p.is_file())
    assert 0 < size < 1_000_000
    named = set(re.findall(r"\b(examples/[\w./-]*\w/?)", (ROOT / "README.md").read_text(encoding="utf-8")))
    assert named and all((ROOT / p).exists() for p in named), named
    ignored = subprocess.run(["git", "check-ignore", "out/ipseg/cat.mask.png", "data/perseg/x.png"], cwd=ROOT,
                             capture_output=True, text=True)
    assert ignored.stdout.split() == ["out/ipseg/cat.mask.png", "data/perseg/x.png"], ignored


def test_shell_commands_run_as_written(tmp_path):
    isolated = {"VISION_WEIGHTS_DIR": str(tmp_path / "weights"), "HF_HUB_CACHE": str(tmp_path / "hf")}
    if weights.status("sam_t") == "present":  # installed by CI before the tests: no npm download here
        (tmp_path / "weights").mkdir()
        (tmp_path / "weights" / "sam_t").symlink_to(weights.resolve("sam_t", download=False))
    commands = _commands("shell")
    assert {shlex.split(c)[3] for c in commands} == {"--help", "weights"}  # the set-up's form, in a fresh process
    for command in commands:
        words = shlex.split(command)[3:]
        if words[:2] == ["weights", "download"]:
            # Nothing may be downloaded: every server (the Hub, dl.fbaipublicfiles.com via the proxy) is closed.
            closed = "http://127.0.0.1:9"
            out = _shell(command, **isolated, VISION_OFFLINE="0", HF_ENDPOINT=closed, HTTPS_PROXY=closed,
                         HTTP_PROXY=closed, https_proxy=closed, http_proxy=closed, NO_PROXY="", no_proxy="")
            assert out.returncode == 1, out.stdout + out.stderr
            names = weights_named(words[2:])
            every_engine = {n for engine in weights.ENGINES for n in weights.models_for(engine)}
            assert set(names) == every_engine  # the README's download line covers every engine
            fetched = [n for n in names if f"{n}: present in " not in out.stdout]
            assert set(names) - set(fetched) <= {"sam_t"}
            for name in fetched:
                assert f"{name}: download from " in out.stdout and "failed: " in out.stdout
            assert out.stdout.count("by hand and place the file(s) at:") == len(fetched)
            assert f"{len(fetched)} models of {len(names)} not downloaded" in out.stdout
            assert "weights download " + " ".join(words[2:]) in out.stdout  # the retry is the same command
        else:
            out = _shell(command, **isolated)
            assert out.returncode == 0, out.stderr
            assert out.stdout.startswith(f"usage: {VENV_PYTHON} -m vision ")


def test_weights_list_runs_as_written(tmp_path, monkeypatch, capsys):
    (command,) = _commands("listing")
    monkeypatch.setenv("VISION_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    assert main(shlex.split(command)[3:]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in weights.REGISTRY)


@pytest.mark.parametrize("command", _commands("bench"))
def test_bench_command_is_valid(command, capsys):
    words = shlex.split(command)[3:]
    with pytest.raises(SystemExit) as done:
        main([*words, "--help"])
    assert done.value.code == 0
    assert f"-m vision bench {words[1]}" in capsys.readouterr().out.splitlines()[0]


def test_app_synopsis_matches_its_options(monkeypatch, capsys):
    """``app.py --help`` in-process: the app tests have imported Gradio by then (a child process re-imports it)."""
    (synopsis,) = _commands("app")
    monkeypatch.syspath_prepend(str(ROOT))
    app = importlib.import_module("app")
    with pytest.raises(SystemExit) as done:
        app.parse_args(["--help"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    options = re.findall(r"\[(--[a-z-]+)", synopsis)
    assert options and all(option in printed for option in options), (options, printed)
