"""The generation engine (vision/engines/generate/), its CLI and the bench dispatcher, in tiny mode."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vision.engines.generate import GenerateConfig, GenerateEngine, GenerateError, build_pipeline

FAST = {"steps": 4, "guidance": 5.0}


def generate(prompts, hub, image=None, progress=None, **settings):
    """One call of the engine with ``settings`` (GenerateConfig fields) on ``hub``."""
    return GenerateEngine(GenerateConfig.from_preset("default", **settings), hub)(prompts, image=image,
                                                                                 progress=progress)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_build_pipeline_shares_the_hub_modules(tiny_hub):
    import diffusers

    pipe = build_pipeline(tiny_hub)
    assert isinstance(pipe, diffusers.StableDiffusionPipeline)
    assert pipe.unet is tiny_hub.get("sd15_unet") and pipe.vae is tiny_hub.get("sd15_vae")
    assert pipe.text_encoder is tiny_hub.get("sd15_text_encoder") and pipe.safety_checker is None
    assert pipe.scheduler is not tiny_hub.get("sd15_scheduler")
    assert isinstance(build_pipeline(tiny_hub, scheduler="plms").scheduler, diffusers.PNDMScheduler)
    assert isinstance(build_pipeline(tiny_hub, scheduler="dpm++").scheduler, diffusers.DPMSolverMultistepScheduler)
    xl = build_pipeline(tiny_hub, family="sdxl", scheduler="euler", img2img=True)
    assert isinstance(xl, diffusers.StableDiffusionXLImg2ImgPipeline) and xl.unet is tiny_hub.get("sdxl_unet")
    rv = build_pipeline(tiny_hub, family="realvisxl")  # SDXL's architecture, RealVisXL V4.0's own modules
    assert isinstance(rv, diffusers.StableDiffusionXLPipeline) and rv.unet is tiny_hub.get("realvisxl_unet")
    assert rv.vae is tiny_hub.get("realvisxl_vae") and rv.text_encoder is tiny_hub.get("realvisxl_text_encoder")
    assert rv.tokenizer_2 is tiny_hub.get("sdxl_tokenizer_2") and rv.unet is not xl.unet


def test_generate_with_compare_reports_both_times(tiny_hub):
    result = generate(["a red fox", "a blue bird"], tiny_hub, deepcache=2, branch=0, compare=True, **FAST)
    assert len(result.images) == 2 and result.images[0].shape == (64, 64, 3)
    assert result.images[0].dtype == np.uint8 and result.seeds == [0, 1]
    assert result.deepcache["full_steps"] == [0, 2] and result.deepcache["partial_calls"] == 2
    timings = result.timings
    assert timings["seconds"] > 0 and timings["baseline_seconds"] > 0
    assert timings["speedup"] == pytest.approx(result.baseline_seconds / result.seconds, rel=1e-2)
    record = json.loads(json.dumps(result.to_record()))
    assert record["tiny"] and "TINY MODE" in record["notice"]
    assert (record["engine"], record["method"], record["preset"], record["mode"]) == (
        "generate", "deepcache", "default", "product")
    assert record["models"]["unet"] == "sd15_unet" and record["cache"]["interval"] == 2
    assert record["difference_vs_plain"]["max_abs"] >= 0
    assert set(result.to_files()) == {"0.png", "1.png", "0.plain.png", "1.plain.png"}


def test_n1_engine_output_equals_deepcache_off(tiny_hub):
    off = generate("a cat", tiny_hub, deepcache=0, seed=3, **FAST)
    one = generate("a cat", tiny_hub, deepcache=1, seed=3, **FAST)
    assert off.deepcache is None and one.deepcache["full_calls"] == 4
    assert np.array_equal(off.images[0], one.images[0])
    assert set(off.to_files()) == {"png"}


def test_img2img_and_sdxl(tiny_hub):
    start = generate("a house", tiny_hub, deepcache=0, **FAST).images[0]
    result = generate("a house at night", tiny_hub, image=start, steps=8, strength=0.5, deepcache=3)
    assert result.img2img and result.images[0].shape == (64, 64, 3)
    assert result.deepcache["steps"] == 4 and result.deepcache["full_steps"] == [4, 7]
    resized = generate("a house", tiny_hub, image=np.zeros((50, 70, 3), np.uint8), steps=2, strength=1.0)
    assert resized.images[0].shape == (48, 64, 3)
    xl = generate("a boat", tiny_hub, family="sdxl", scheduler="dpm++", deepcache=2, **FAST)
    assert xl.images[0].shape == (64, 64, 3) and xl.deepcache["partial_calls"] == 2


def test_paper_preset_settings_and_records(tiny_hub):
    paper = GenerateConfig.from_preset("paper")
    assert (paper.preset, paper.family, paper.scheduler, paper.steps, paper.guidance) == (
        "paper", "sd15", "pndm", 50, 7.5)
    assert (paper.width, paper.height, paper.deepcache, paper.branch, paper.schedule) == (512, 512, 5, 1, "uniform")
    assert paper.reference and not GenerateConfig().reference and GenerateConfig().preset == "default"
    with pytest.raises(GenerateError, match="unknown generate preset"):
        GenerateConfig.from_preset("fast")
    config = GenerateConfig.from_preset("paper", steps=6, width=64, height=64, deepcache=2)
    record = GenerateEngine(config, tiny_hub)("a cat").to_record()
    assert (record["preset"], record["mode"], record["reference"]) == ("paper", "reference", True)
    assert record["config"]["preset"] == "paper" and record["config"]["reference"] is True
    calls = record["deepcache_calls"]  # PLMS: 6 steps are 7 loop entries, numbered as the paper's loop
    assert calls["numbering"] == "paper loop index" and calls["steps"] == 7 and calls["full_steps"] == [0, 2, 4]
    ours = generate("a cat", tiny_hub, scheduler="pndm", steps=6, deepcache=2).to_record()["deepcache_calls"]
    assert ours["numbering"] == "distinct timesteps" and ours["steps"] == 6


def test_progress_after_every_denoising_step(tiny_hub):
    plain = generate("a cat", tiny_hub, deepcache=2, seed=1, **FAST)
    events = []
    result = generate("a cat", tiny_hub, deepcache=2, seed=1, progress=events.append, **FAST)
    assert np.array_equal(result.images[0], plain.images[0])  # reporting changes no pixel
    assert [(e["run"], e["runs"], e["step"], e["steps"]) for e in events] == [(1, 1, s, 4) for s in range(1, 5)]
    assert [e.fraction for e in events] == [0.25, 0.5, 0.75, 1.0]
    assert events[0].message == "with DeepCache: step 1/4"

    events.clear()
    generate("a cat", tiny_hub, deepcache=2, compare=True, progress=events.append, **FAST)
    labels = [e.message.split(":")[0] for e in events]
    assert labels == ["without DeepCache"] * 4 + ["with DeepCache"] * 4  # not the warm-up
    assert [e.fraction for e in events] == [i / 8 for i in range(1, 9)]

    events.clear()
    generate("a cat", tiny_hub, deepcache=0, scheduler="pndm", progress=events.append, **FAST)
    assert [e["step"] for e in events] == [1, 2, 3, 4, 5] and events[-1]["steps"] == 5  # PLMS: one more entry
    assert events[0].message.startswith("denoising")
    events.clear()
    generate("a cat", tiny_hub, image=np.zeros((64, 64, 3), np.uint8), steps=8, strength=0.5,
             progress=events.append)
    assert [(e["step"], e["steps"]) for e in events] == [(1, 4), (2, 4), (3, 4), (4, 4)]  # the steps img2img runs


def test_a_cancelled_run_stops_at_the_next_step_and_releases_the_unet(tiny_hub):
    """A progress callback that raises Cancelled stops the pipeline at that step; DeepCache is detached and
    the model lock free again, and the next run equals a fresh one."""
    import threading

    from vision.deepcache.cache import attached_hook
    from vision.engines.contract import Cancelled
    from vision.hub import model_lock

    steps_seen = []

    def cancel_at_2(event):
        steps_seen.append(event["step"])
        if event["step"] == 2:
            raise Cancelled("client gone")

    with pytest.raises(Cancelled):
        generate("a cat", tiny_hub, deepcache=2, seed=4, progress=cancel_at_2, **FAST)
    assert steps_seen == [1, 2]
    unet = tiny_hub.get("sd15_unet")
    assert attached_hook(unet) is None
    got = []

    def take_the_lock():
        got.append(model_lock(unet).acquire(timeout=5))
        if got[-1]:
            model_lock(unet).release()

    worker = threading.Thread(target=take_the_lock)
    worker.start()
    worker.join()
    assert got == [True]
    again = generate("a cat", tiny_hub, deepcache=2, seed=4, **FAST)
    fresh = generate("a cat", tiny_hub, deepcache=2, seed=4, **FAST)
    assert np.array_equal(again.images[0], fresh.images[0])


@pytest.mark.parametrize("options, message", [
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"steps": -5}, "steps must be an integer >= 1"),
    ({"deepcache": -1}, "deepcache interval must be an integer >= 0"),
    ({"branch": 12}, "branch 12 is out of range"),
    ({"width": 65}, "multiple of 8"),
    ({"height": 0}, "multiple of 8"),
    ({"scheduler": "lms"}, "unknown scheduler"),
    ({"family": "sd3"}, "unknown model family"),
    ({"strength": 0}, "strength"),
    ({"guidance": -1}, "guidance"),
    ({"schedule": "nonuniform", "power": 1}, "power"),
    ({"colour": "red"}, "unknown generate setting"),
])
def test_bad_settings(tiny_hub, options, message):
    with pytest.raises(GenerateError, match=message):
        generate("a cat", tiny_hub, **options)


def test_config_is_frozen_and_validate_returns_it_normalised():
    import dataclasses

    config = GenerateConfig(scheduler="PLMS", schedule="non-uniform")
    normal = config.validate()
    assert isinstance(normal, GenerateConfig) and (normal.scheduler, normal.schedule) == ("pndm", "nonuniform")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.steps = 3
    with pytest.raises(GenerateError, match="steps must be an integer >= 1.*guidance must be a number"):
        GenerateConfig(steps=0, guidance=-1).validate()  # every bad field named at once


def test_bad_prompts_and_img2img_steps(tiny_hub):
    with pytest.raises(ValueError, match="prompt list is empty"):
        generate([], tiny_hub)
    with pytest.raises(ValueError, match="strings"):
        generate([3], tiny_hub)
    with pytest.raises(ValueError, match="no denoising step"):
        generate("a cat", tiny_hub, image=np.zeros((64, 64, 3), np.uint8), steps=2, strength=0.3)
    with pytest.raises(ValueError, match="branch 9 is out of range"):
        generate("a cat", tiny_hub, family="sdxl", branch=9)


@pytest.fixture
def cli(tiny_hub, monkeypatch):
    """Run ``python -m vision ...`` in-process, keeping the session's tiny hub afterwards."""
    import vision.hub as hub_module
    from vision.cli import main

    monkeypatch.setenv("VISION_TINY", "1")

    def run(*argv):
        saved = hub_module._default_hub
        try:
            return main([*argv])
        finally:
            hub_module.set_hub(saved)

    return run


def test_cli_prompt_and_prompts_file(cli, tmp_path, capsys):
    out = tmp_path / "one"
    assert cli("--tiny", "generate", "--prompt", "a red fox", "--output", str(out), "--steps", "3",
               "--deepcache", "2", "--no-progress") == 0
    pngs = list(out.glob("*.png"))
    assert len(pngs) == 1
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rows[0]["status"] == "ok" and rows[0]["tiny"] and rows[0]["deepcache_calls"]["full_steps"] == [0, 2]

    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a cat\n# a comment\n{"prompt": "a dog", "seed": 42, "steps": 2}\n')
    out2 = tmp_path / "many"
    args = ["--tiny", "generate", "--prompts", str(prompts), "--output", str(out2), "--steps", "3", "--no-progress",
            "--compare"]
    assert cli(*args) == 0
    rows = {r["id"]: r for r in map(json.loads, (out2 / "results.jsonl").read_text().splitlines())}
    assert len(rows) == 2 and len(list(out2.glob("*.plain.png"))) == 2
    dog = next(r for r in rows.values() if r["prompts"] == ["a dog"])
    assert dog["seeds"] == [42] and dog["config"]["steps"] == 2 and "speedup" in dog["timings"]
    cat = next(r for r in rows.values() if r["prompts"] == ["a cat"])
    assert cat["seeds"] == [0]
    assert cli(*args) == 0  # resumed: nothing redone
    assert len((out2 / "results.jsonl").read_text().splitlines()) == 2


def test_cli_bad_input(cli, tmp_path, capsys):
    assert cli("--tiny", "generate", "--prompt", "x", "--output", str(tmp_path), "--deepcache", "-2") == 2
    assert "deepcache interval" in capsys.readouterr().err
    assert cli("--tiny", "generate", "--prompt", "x", "--output", str(tmp_path), "--size", "100") == 2
    assert "multiple of 8" in capsys.readouterr().err
    assert cli("--tiny", "generate", "--prompt", "  ", "--output", str(tmp_path)) == 2
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    assert cli("--tiny", "generate", "--prompts", str(empty), "--output", str(tmp_path / "o")) != 0


def test_bench_dispatch(cli, tmp_path, capsys):
    assert cli("bench", "no-such-bench") == 2
    err = capsys.readouterr().err
    assert "unknown benchmark" in err and "deepcache" in err
    code = cli("bench", "deepcache", "--tiny", "--steps", "4", "--intervals", "2", "--branches", "0",
               "--results", str(tmp_path))
    assert code == 0
    result = json.loads((tmp_path / "deepcache_tiny.json").read_text())
    row = result["rows"][0]
    assert row["N"] == 2 and row["ours_speedup"] > 0 and row["S_N_all_ops"] > 1
    if result["peer"]["available"]:
        assert row["max_abs_diff_vs_peer"] <= 1e-5
    else:
        assert "skipped" in (tmp_path / "deepcache_tiny.md").read_text()


def test_generation_waits_while_another_engine_holds_the_shared_unet(tiny_hub):
    """An engine that temporarily changes the shared UNet (Story's IP-Adapter, IPSeg's hooks) holds its
    model lock; a generation in another thread runs only after it is released."""
    import threading

    from vision.hub import model_lock

    lock = model_lock(tiny_hub.get("sd15_unet"))
    finished = threading.Event()
    worker = threading.Thread(target=lambda: (generate("a cat", tiny_hub, deepcache=0, **FAST), finished.set()))
    with lock:
        worker.start()
        assert not finished.wait(1.0)
    worker.join(120)
    assert finished.is_set()
