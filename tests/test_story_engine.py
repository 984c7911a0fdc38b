"""Story-Adapter runs on tiny random-weight models (64x64, 2-3 steps, 2-3 frames, 1-2 rounds)."""

import json

import numpy as np
import pytest
import torch

from vision.engines import story as S
from vision.engines.story import engine as engine_module

PROMPTS = ["a girl with a red kite", "the girl runs on a hill", "the kite flies over the sea"]


def cfg(**kw):
    base = dict(rounds=1, steps=3, size=64, seed=5)
    return S.StoryConfig(**{**base, **kw})


def run(hub, tmp_path, prompts=PROMPTS, name="out", **kw):
    engine_kw = {k: kw.pop(k) for k in ("progress", "stop_after_round", "overwrite") if k in kw}
    return S.StoryEngine(cfg(**kw), hub)(prompts, tmp_path / name, **engine_kw)


def ip_processors(unet):
    """The IP-Adapter attention processors on ``unet`` (one per cross-attention layer)."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    return [p for p in unet.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor2_0)]


@pytest.fixture(scope="module")
def two_rounds(tiny_hub, tmp_path_factory):
    """One story of 2 frames, 2 rounds of 2 steps, and its progress events: read by several tests."""
    events = []
    result = run(tiny_hub, tmp_path_factory.mktemp("story"), PROMPTS[:2], rounds=2, steps=2,
                 progress=events.append)
    return result, events


def _generate(hub, prompt, **settings):
    from vision.engines.generate import GenerateConfig, GenerateEngine

    config = GenerateConfig(steps=3, seed=5, width=64, height=64, negative_prompt=S.DEFAULT_NEGATIVE, **settings)
    return GenerateEngine(config, hub)(prompt).images[0]


def test_round0_equals_the_generation_engine(tiny_hub, tmp_path):
    result = run(tiny_hub, tmp_path, PROMPTS[:2], rounds=0)
    for prompt, frame in zip(PROMPTS[:2], result.round_images(0)):  # the default style is the reference's comic
        plain = _generate(tiny_hub, S.StoryConfig().styled(prompt), deepcache=3)
        assert np.array_equal(frame, plain)


def test_round0_equals_generation_without_deepcache_too(tiny_hub, tmp_path):
    result = run(tiny_hub, tmp_path, PROMPTS[:1], rounds=0, deepcache=0, style="comic")
    plain = _generate(tiny_hub, S.StoryConfig(style="comic").styled(PROMPTS[0]), deepcache=0)
    assert np.array_equal(result.final[0], plain)


def test_lambda_zero_round_equals_round0(tiny_hub, tmp_path):
    result = run(tiny_hub, tmp_path, PROMPTS[:2], rounds=1, lambda_start=0.0, lambda_end=0.0)
    assert all(np.array_equal(a, b) for a, b in zip(result.round_images(0), result.round_images(1)))


def test_reference_rounds_change_frames_and_one_seed_is_used(tiny_hub, tmp_path):
    result = run(tiny_hub, tmp_path, PROMPTS[:2], rounds=1, lambda_start=1.0, lambda_end=1.0)
    r0, r1 = result.round_images(0), result.round_images(1)
    assert not all(np.array_equal(a, b) for a, b in zip(r0, r1))
    assert result.to_record()["lambdas"] == [0.0, 1.0]


def test_grca_tokens_and_one_encoder_call_per_round(tiny_hub, tmp_path, monkeypatch):
    """In a real run every cross-attention IP projection sees the B previous frames x 4 tokens of one
    adapter ([2 (CFG), B, 4, C] -> one sequence of 4B tokens), and the image encoder runs once per
    round on all B frames."""
    encoder = tiny_hub.get("ip_image_encoder_h")
    encoder_calls = []
    enc_hook = encoder.register_forward_hook(lambda m, inp, out: encoder_calls.append(inp[0].shape[0]))
    kv_inputs = []
    original = S.ip_adapter_on

    def spying_ip_adapter_on(pipe, state_dict, copies=1):
        assert copies == 1  # no characters: the one adapter of the paper
        ctx = original(pipe, state_dict, copies)
        ctx.__enter__()
        procs = ip_processors(pipe.unet)
        for p in procs:
            p.to_k_ip[0].register_forward_hook(lambda m, inp, out: kv_inputs.append((tuple(inp[0].shape),
                                                                                     tuple(out.shape))))
        return _Wrapped(ctx, procs)

    monkeypatch.setattr(engine_module, "ip_adapter_on", spying_ip_adapter_on)
    try:
        B = len(PROMPTS)
        run(tiny_hub, tmp_path, PROMPTS, rounds=2, steps=2, deepcache=0)
    finally:
        enc_hook.remove()
    assert encoder_calls == [B, B]  # rounds 1 and 2: one batched call each, round 0 none
    C = tiny_hub.get("sd15_unet").config.cross_attention_dim
    assert kv_inputs, "the IP-Adapter key projection never ran"
    for inp, out in kv_inputs:
        assert inp == (2, B, 4, C)  # one adapter's image list: all B frames, 4 tokens each
        assert out[1] * out[2] == 4 * B  # flattened by the processor into 4B key tokens
    # 2 rounds x B frames x 2 steps x (number of cross-attention layers)
    n_cross = sum(1 for k in tiny_hub.get("sd15_unet").attn_processors if k.endswith("attn2.processor"))
    assert len(kv_inputs) == 2 * B * 2 * n_cross


class _Wrapped:
    def __init__(self, ctx, procs):
        self.ctx, self.procs = ctx, procs

    def __enter__(self):
        return self.procs

    def __exit__(self, *exc):
        for p in self.procs:
            p.to_k_ip[0]._forward_hooks.clear()
        return self.ctx.__exit__(*exc)


def test_shared_unet_is_plain_again_after_a_story(tiny_hub, tmp_path):
    unet = tiny_hub.get("sd15_unet")
    procs = dict(unet.attn_processors)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = unet(x, 5, encoder_hidden_states=text).sample
    run(tiny_hub, tmp_path, PROMPTS[:2], rounds=1, steps=2)
    assert all(unet.attn_processors[k] is v for k, v in procs.items())
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    with torch.no_grad():
        assert torch.equal(unet(x, 5, encoder_hidden_states=text).sample, before)
    from vision.deepcache.cache import attached_hook

    assert attached_hook(unet) is None and unet.forward.__func__ is type(unet).forward  # DeepCache detached too


def test_outputs_manifest_record_and_progress(two_rounds):
    result, events = two_rounds
    out = result.output_dir
    assert result.complete and result.rounds_done == [0, 1, 2] and not result.stopped_early
    for r in range(3):
        for i in range(2):
            assert (out / f"round_{r:02d}" / f"frame_{i:03d}.png").is_file()
        assert (out / f"round_{r:02d}" / f"storyboard_round_{r:02d}.png").is_file()
    finals = [S.read_png(out / "final" / f"frame_{i:03d}.png") for i in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(finals, result.round_images(2)))
    assert all(np.array_equal(a, b) for a, b in zip(finals, result.final))
    board = S.read_png(out / "storyboard.png")
    assert np.array_equal(board, result.storyboard) and np.array_equal(board, S.make_storyboard(finals))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rounds_done"] == [0, 1, 2] and manifest["final"] == result.files["final"]
    assert manifest["args_hash"] == S.arguments_hash(manifest["arguments"])
    assert set(manifest["rounds"]) == {"0", "1", "2"}
    assert all(manifest["rounds"][r]["timings"]["seconds"] > 0 for r in "012")
    assert manifest["rounds"]["1"]["timings"]["encode_seconds"] > 0
    assert not [p for p in out.rglob("*.part")]
    record = result.to_record()
    json.dumps(record)
    assert record["tiny"] and "random" in record["notice"].lower() and set(record["round_timings"]) == {"0", "1", "2"}
    files = result.to_files()
    assert set(files) == {"storyboard.png", "frame_000.png", "frame_001.png", "record.json"}
    assert all(p.is_file() for p in result.paths())
    # progress: every frame of every round, in order, and every denoising step between, ending at 1.0
    frame_events = [(e["round"], e["frame"]) for e in events if e["frame"] > 0 and not e["steps"]]
    assert frame_events == [(r, i) for r in range(3) for i in (1, 2)]
    step_events = [(e["round"], e["frame"], e["step"], e["steps"]) for e in events if e["steps"]]
    assert step_events == [(r, i, s, 2) for r in range(3) for i in (0, 1) for s in (1, 2)]
    assert [e.message for e in events if e["steps"]][:2] == ["round 0/2: frame 1/2, step 1/2",
                                                          "round 0/2: frame 1/2, step 2/2"]
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert events[1].fraction == pytest.approx(0.5 / 6)  # half of the first of 3 x 2 frames


def test_interrupt_and_resume_gives_identical_final_frames(tiny_hub, tmp_path, two_rounds):
    kw = dict(prompts=PROMPTS[:2], rounds=2, steps=2)
    full = two_rounds[0]  # the same story, run in one go

    partial = run(tiny_hub, tmp_path, name="resumed", stop_after_round=0, **kw)
    assert partial.stopped_early and partial.rounds_done == [0] and partial.final is None
    assert not (tmp_path / "resumed" / "storyboard.png").exists()

    class Crash(Exception):
        pass

    def crash_mid_round(p):  # dies after the first frame of round 2: round 2 is not done
        if p["round"] == 2 and p["frame"] == 1:
            raise Crash

    with pytest.raises(Crash):
        run(tiny_hub, tmp_path, name="resumed", progress=crash_mid_round, **kw)
    manifest = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert manifest["rounds_done"] == [0, 1]

    events = []
    resumed = run(tiny_hub, tmp_path, name="resumed", progress=events.append, **kw)
    assert resumed.resumed_from == 1 and resumed.complete
    assert {e["round"] for e in events if e["frame"] > 0} == {2}  # only round 2 was generated again
    assert all(np.array_equal(a, b) for a, b in zip(resumed.final, full.final))
    for r in range(3):
        assert all(np.array_equal(a, b) for a, b in zip(resumed.round_images(r), full.round_images(r)))

    events.clear()
    again = run(tiny_hub, tmp_path, name="resumed", progress=events.append, **kw)  # all done: nothing runs
    assert not [e for e in events if e["frame"] > 0]
    assert again.resumed_from == 2 and all(np.array_equal(a, b) for a, b in zip(again.final, full.final))


def test_a_missing_frame_file_makes_its_round_run_again(tiny_hub, tmp_path):
    first = run(tiny_hub, tmp_path, PROMPTS[:2], rounds=1, steps=2)
    (first.output_dir / "round_01" / "frame_001.png").unlink()
    again = run(tiny_hub, tmp_path, PROMPTS[:2], rounds=1, steps=2)
    assert again.resumed_from == 0
    assert all(np.array_equal(a, b) for a, b in zip(again.final, first.final))


def test_other_arguments_in_the_same_folder(tiny_hub, tmp_path):
    run(tiny_hub, tmp_path, PROMPTS[:2], rounds=0, steps=2)
    with pytest.raises(S.StoryError, match="different arguments"):
        run(tiny_hub, tmp_path, PROMPTS[:2], rounds=0, steps=2, seed=6)
    result = run(tiny_hub, tmp_path, PROMPTS[:1], rounds=0, steps=2, seed=6, overwrite=True)
    assert result.resumed_from is None
    assert not (result.output_dir / "round_00" / "frame_001.png").exists()  # the old run's files are gone
    (result.output_dir / "manifest.json").write_text("{not json")
    with pytest.raises(S.StoryError, match="manifest"):
        run(tiny_hub, tmp_path, PROMPTS[:1], rounds=0, steps=2, seed=6)


def test_rounds_zero_and_one_frame(tiny_hub, tmp_path):
    result = run(tiny_hub, tmp_path, PROMPTS[:1], rounds=0, steps=2)
    assert result.rounds_done == [0] and len(result.final) == 1
    assert np.array_equal(result.final[0], result.round_images(0)[0])
    assert result.storyboard.shape == (64 + 2 * S.STORYBOARD_GAP, 64 + 2 * S.STORYBOARD_GAP, 3)
    single = run(tiny_hub, tmp_path, PROMPTS[:1], name="one", rounds=1, steps=2)  # references only itself
    assert single.complete and len(single.final) == 1


def test_two_hundred_reference_frames(tiny_hub):
    """A round over 200 frames: one encoder call, 800 reference tokens per cross-attention (memory: two
    rounds of frames + [2, 200, D] embeddings; measured in bench/results/story.md)."""
    engine = S.StoryEngine(cfg(steps=1, guidance=7.5, deepcache=0), tiny_hub)
    pipe = engine.pipeline()
    rng = np.random.default_rng(0)
    previous = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(200)]
    shapes = []
    with S.ip_adapter_on(pipe, tiny_hub.get("ip_adapter_sd15")):
        procs = ip_processors(pipe.unet)
        hook = procs[0].to_k_ip[0].register_forward_hook(lambda m, inp, out: shapes.append(tuple(inp[0].shape)))
        frames, _ = engine.generate_round(pipe, 1, ["frame 1"], previous, 64)
        hook.remove()
    assert len(frames) == 1 and frames[0].shape == (64, 64, 3)
    assert shapes[0][:3] == (2, 200, 4)


def test_sdxl_family_runs_on_realvisxl(tiny_hub, tmp_path):
    result = run(tiny_hub, tmp_path, PROMPTS[:2], rounds=1, steps=2, family="sdxl")
    assert result.complete and result.final[0].shape == (64, 64, 3)
    record = result.to_record()
    assert record["checkpoint"] == "realvisxl" and record["guidance"] == 5.0
    pipe = S.StoryEngine(cfg(family="sdxl"), tiny_hub).pipeline()
    assert pipe.unet is tiny_hub.get("realvisxl_unet") and pipe.unet is not tiny_hub.get("sdxl_unet")
    assert pipe.text_encoder_2 is tiny_hub.get("realvisxl_text_encoder_2")
    assert pipe.unet.encoder_hid_proj is None  # the IP-Adapter is off the shared UNet again
    base = S.StoryEngine(cfg(family="sdxl", checkpoint="sdxl"), tiny_hub).pipeline()
    assert base.unet is tiny_hub.get("sdxl_unet")


def test_cli_story(tiny_hub, tmp_path, capsys):
    from vision import cli
    from vision.hub import set_hub

    story = tmp_path / "story.txt"
    story.write_text("a fox finds a key\n\n  the fox opens a door  \n", encoding="utf-8")
    try:
        rc = cli.main(["--tiny", "--device", "cpu", "story", "--story", str(story), "--output",
                       str(tmp_path / "cli"), "--rounds", "1", "--steps", "2", "--style", "comic", "--deepcache", "2"])
        assert rc == 0
        out = capsys.readouterr().out
        assert "storyboard" in out and "TINY MODE" in out
        manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
        assert manifest["arguments"]["prompts"] == ["a fox finds a key", "the fox opens a door"]
        assert manifest["arguments"]["config"]["style"] == "comic"
        assert manifest["arguments"]["config"]["deepcache"] == 2
        assert (tmp_path / "cli" / "storyboard.png").is_file()
        assert (manifest["arguments"]["preset"], manifest["arguments"]["mode"]) == ("sd15", "product")

        rc = cli.main(["--tiny", "--device", "cpu", "story", "--story", str(story), "--output",
                       str(tmp_path / "ref"), "--preset", "reference", "--rounds", "1", "--steps", "2"])
        assert rc == 0
        assert "reference preset, reference mode" in capsys.readouterr().out
        manifest = json.loads((tmp_path / "ref" / "manifest.json").read_text())
        arguments = manifest["arguments"]
        assert (arguments["preset"], arguments["mode"]) == ("reference", "reference") and arguments["guidance"] == 5.0
        assert arguments["config"]["preset"] == "reference" and arguments["config"]["reference"] is True
        assert arguments["config"]["deepcache"] == 0 and arguments["config"]["rounds"] == 1  # --rounds overrides
        assert arguments["models"] == {"ip_adapter": "ip_adapter_sdxl", "image_encoder": "ip_image_encoder_bigg",
                                       "family": "sdxl", "checkpoint": "realvisxl"}
        assert cli.main(["--tiny", "story", "--story", str(story), "--output", str(tmp_path / "e"),
                         "--preset", "reference", "--family", "sd15"]) == 2
        assert "checkpoint 'realvisxl' is not a sd15 model" in capsys.readouterr().err

        empty = tmp_path / "empty.txt"
        empty.write_text("\n\n", encoding="utf-8")
        assert cli.main(["--tiny", "story", "--story", str(empty), "--output", str(tmp_path / "e")]) == 2
        assert "no frames" in capsys.readouterr().err
        assert cli.main(["--tiny", "story", "--story", str(story), "--output", str(tmp_path / "e"),
                         "--rounds", "-1"]) == 2
        assert "rounds" in capsys.readouterr().err
    finally:
        set_hub(tiny_hub)


def test_bad_deepcache_branch_is_a_story_error(tiny_hub, tmp_path):
    with pytest.raises(S.StoryError, match="branch"):
        run(tiny_hub, tmp_path, PROMPTS[:1], rounds=0, steps=1, deepcache_branch=99)
