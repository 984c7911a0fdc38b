"""``python -m vision`` as a user meets it: start-up cost, limits checked up front, the speed-up of
``generate --compare``, failed downloads, the command form advice names, plurals and bench usage lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vision import batch, wording
from vision.cli import chosen_command, main

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "numpy", "PIL", "diffusers", "transformers", "gradio", "cv2", "vision.engines", "vision.batch")
# An engine's package marker and its torch-free config (choices for the options) are all --help may load.
# torch-free modules the options need: the IPSeg and Video configs (their choices) and the contract they build on
LIGHT_ENGINE_MODULES = ("vision.engines", "vision.engines.contract", "vision.engines.ipseg",
                        "vision.engines.ipseg.config", "vision.engines.video", "vision.engines.video.config")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def cli(tiny_hub, monkeypatch):
    """``main(argv)`` in tiny mode (the global hub is the shared tiny one)."""
    monkeypatch.setenv("VISION_TINY", "1")
    return lambda *argv: main(list(argv))


# --------------------------------------------------------------------------------------------- start-up


def test_help_imports_no_engine_and_is_fast():
    """``--help`` built every subcommand's arguments, importing torch and every engine (2-10 s)."""
    probe = ("import json, sys, time\nstart = time.perf_counter()\nfrom vision.cli import main\n"
             "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(json.dumps({'seconds': time.perf_counter() - start, 'modules': sorted(sys.modules)}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = [m for m in report["modules"] if (m.split(".")[0] in HEAVY or m.startswith(HEAVY))
             and m not in LIGHT_ENGINE_MODULES]
    assert not heavy, f"--help imports {heavy[:8]}"
    assert report["seconds"] < 2.0
    assert "weights" in out.stdout and "generate" in out.stdout
    start = time.monotonic()
    whole = subprocess.run([sys.executable, "-m", "vision", "--help"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert whole.returncode == 0 and time.monotonic() - start < 5.0  # generous: interpreter start on a busy machine


def test_only_the_chosen_subcommand_builds_its_arguments(capsys):
    assert chosen_command(["--tiny", "--device", "cpu", "ipseg", "--prompt", "x"]) == "ipseg"
    assert chosen_command(["--device=cpu", "trident"]) == "trident" and chosen_command(["--help"]) is None
    from vision.cli import build_parser

    full = build_parser()  # without the argv to parse: every subcommand's arguments, as before
    assert full.parse_args(["weights", "list"]).action == "list"
    assert full.parse_args(["trident", "--labels", "cat", "-i", "x", "-o", "y"]).labels == "cat"
    for name in ("bench", "eval", "generate", "ipseg", "story", "trident", "weights"):
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
        assert f"-m vision {name}" in capsys.readouterr().out


def test_cli_scheduler_default_is_the_engine_default():
    from vision.cli import build_parser
    from vision.engines.generate import GenerateConfig

    args = build_parser(["generate"]).parse_args(["generate", "--prompt", "x", "--output", "o"])
    assert args.scheduler == GenerateConfig().scheduler


# ----------------------------------------------------------------------------------------------- limits


def test_limits():
    from vision.limits import MAX_SIDE, MAX_STEPS, LimitError, check_side, check_steps

    assert check_steps(MAX_STEPS) == MAX_STEPS and check_side(MAX_SIDE) == MAX_SIDE and check_side(8) == 8
    import numpy as np

    assert check_side(np.int64(512)) == 512
    for bad in (0, MAX_STEPS + 1, 2.5, True, "50"):
        with pytest.raises(LimitError, match="--steps must be an integer from 1 to 1000"):
            check_steps(bad, "--steps")
    for bad in (0, 100, MAX_SIDE + 8, 100_000, None):
        with pytest.raises(LimitError, match=f"size must be a multiple of 8 from 8 to {MAX_SIDE}"):
            check_side(bad)


def test_generate_and_story_refuse_out_of_range_steps_and_sizes_before_any_model_runs(cli, tmp_path, capsys,
                                                                                      monkeypatch):
    """``--size 100000`` ended in an allocator error after start-up; ``--steps 10000`` in diffusers'
    message after the models loaded."""
    from vision.engines.generate import GenerateEngine

    def never(*args, **kwargs):
        raise AssertionError("the engine ran")

    monkeypatch.setattr(GenerateEngine, "__call__", never)
    out = tmp_path / "gen"
    for option, value, message in (("--size", "100000", "--size must be a multiple of 8 from 8 to 2048"),
                                   ("--width", "4096", "--width must be"),
                                   ("--steps", "10000", "--steps must be an integer from 1 to 1000")):
        start = time.monotonic()
        assert cli("generate", "--prompt", "a fox", "--output", str(out), option, value, "--no-progress") == 2
        assert message in capsys.readouterr().err and time.monotonic() - start < 5
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a cat\n{"prompt": "a dog", "steps": 5000}\n')
    assert cli("generate", "--prompts", str(prompts), "--output", str(out), "--no-progress") == 2
    assert "prompt 00002-a-dog: steps must be an integer from 1 to 1000" in capsys.readouterr().err
    assert not out.exists(), "nothing started"
    story = tmp_path / "story.txt"
    story.write_text("a knight\n")
    for option, value in (("--steps", "10000"), ("--size", "100000")):
        assert cli("story", "--story", str(story), "--output", str(tmp_path / "story"), option, value) == 2
        assert f"{option} must be" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- generate


def test_generate_compare_prints_the_speedup(cli, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na blue bird\n")
    out = tmp_path / "gen"
    assert cli("generate", "--prompts", str(prompts), "--output", str(out), "--steps", "3", "--deepcache", "2",
               "--compare", "--no-progress") == 0
    printed = capsys.readouterr().out
    rows = {r["id"]: r for r in batch.read_jsonl(out / "results.jsonl")[0]}
    assert "DeepCache vs the plain pipeline" in printed and "tiny random-weight models" in printed
    for rid, row in rows.items():
        assert f"{rid}: {row['timings']['speedup']:.2f}x faster" in printed
    assert "all 2 prompts:" in printed


# ---------------------------------------------------------------------------------------- command form


def test_advice_names_the_command_as_it_runs_here(monkeypatch):
    from vision import weights

    monkeypatch.setattr(sys, "prefix", str(wording.PROJECT_VENV))  # running on the project's .venv
    venv_python = os.path.join(".venv", "Scripts" if os.name == "nt" else "bin", "python")
    assert wording.vision_command("weights", "list") == f"{venv_python} -m vision weights list"
    message = weights.missing_message(weights.spec("sam_b"), "offline")
    assert f"{venv_python} -m vision weights download sam_b" in message
    assert wording.pip_install("pycocotools").endswith(os.path.join(".venv", "bin", "pip") + " install pycocotools") \
        or os.name == "nt"
    monkeypatch.setattr(sys, "prefix", "/usr")  # some other interpreter: its own `python`
    assert wording.vision_command("weights", "list") == "python -m vision weights list"
    assert "  - download them:  python -m vision weights download sam_b" in \
        weights.missing_message(weights.spec("sam_b")).replace("    ", "  ")


def test_plurals(tmp_path):
    assert wording.plural(1, "frame") == "1 frame" and wording.plural(2, "frame") == "2 frames"
    assert wording.plural(1, "pass", "passes") == "1 pass" and wording.plural(0, "pass", "passes") == "0 passes"
    from PIL import Image

    from vision.imaging import sample_image

    (tmp_path / "in").mkdir()
    Image.fromarray(sample_image("coffee")).save(tmp_path / "in" / "one.png")
    lines: list[str] = []
    for _ in range(2):
        batch.run_batch(batch.image_items(tmp_path / "in" / "one.png"), tmp_path / "out",
                        lambda: (lambda item: batch.BatchResult(record={"x": 1})), progress=False, log=lines.append)
    assert "batch: 1 of 1 image already complete, skipping it" in lines


def test_story_summary_line_counts_in_words(cli, tmp_path, capsys):
    story = tmp_path / "story.txt"
    story.write_text("a knight walks into a forest\n")
    assert cli("story", "--story", str(story), "--output", str(tmp_path / "s"), "--rounds", "0", "--steps", "2") == 0
    assert "1 frame x 1 pass (sd15 preset" in capsys.readouterr().out  # was "1 frames x 1 passes"


# --------------------------------------------------------------------------------------------- weights


def test_failed_download_says_what_failed_and_what_else_to_do(tmp_path, monkeypatch, capsys):
    from vision import weights

    monkeypatch.setenv("VISION_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    monkeypatch.delenv("VISION_OFFLINE", raising=False)
    closed = weights.WeightSpec("sam_b", "test model", ("sam.pth",), 1, "x", url="http://127.0.0.1:9/sam.pth")
    monkeypatch.setitem(weights.REGISTRY, "sam_b", closed)
    assert main(["weights", "download", "sam_b"]) == 1
    out = capsys.readouterr().out
    assert "sam_b: download from http://127.0.0.1:9/sam.pth failed: " in out
    assert "could not be reached: check the network connection" in out
    assert "by hand and place the file(s) at:" in out and str(tmp_path / "w" / "sam_b" / "sam.pth") in out
    assert "VISION_WEIGHTS_SAM_B" in out and "--tiny" in out
    assert "Download them with" not in out, "no advice to run the command that just failed, as if it would work"
    assert "1 model of 1 not downloaded. Once the cause above is fixed" in out

    monkeypatch.setenv("VISION_OFFLINE", "1")
    assert main(["weights", "download", "sam_b"]) == 1
    assert "downloads are off (VISION_OFFLINE=1 is set; unset it to download)" in capsys.readouterr().out

    (tmp_path / "w" / "sam_b").mkdir(parents=True)
    (tmp_path / "w" / "sam_b" / "sam.pth").write_bytes(b"x")
    assert main(["weights", "download", "sam_b"]) == 0
    assert f"sam_b: present in {tmp_path / 'w' / 'sam_b'}" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------- bench


def test_bench_usage_lines_agree(capsys):
    from vision.commands.bench import BENCH_DIR, available

    names = [n for n in available() if n != "common"]
    assert {"batch", "deepcache", "ipseg", "story", "trident"} <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as done:
            main(["bench", name, "--help"])
        assert done.value.code == 0
        usage = capsys.readouterr().out.splitlines()[0]
        assert usage.startswith(f"usage: {wording.vision_command('bench', name)} "), usage
        source = BENCH_DIR / f"{name}.py"
        source = source if source.is_file() else BENCH_DIR / name / "__init__.py"  # a benchmark package
        doc_lines = [line.strip() for line in source.read_text().splitlines()
                     if line.strip().startswith(("python ", "`python "))]
        assert doc_lines and all(line.startswith(f"python -m vision bench {name}") for line in doc_lines), doc_lines
