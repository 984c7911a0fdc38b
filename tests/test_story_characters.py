"""Story with the user's characters (#27 items 1-2): declaring them, finding them in frames, the IP-Adapter
reference tokens in every frame's cross-attention with the documented weights, the record, resuming, bad
input; without characters the frames are bit-identical to the engine before characters. Tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vision.engines import story as S
from vision.engines.story import engine as engine_module

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURE = "tests/fixtures/story_frames_before_characters.npz"
STORY = ["Ann flies a red kite", "bob reads under a tree", "[Ann, Bob] share bread", "a hill at dusk"]


def cfg(**kw):
    return S.StoryConfig(**{"rounds": 1, "steps": 2, "size": 64, "seed": 5, **kw})


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Two characters' reference pictures as PNG files (Bob has two views)."""
    folder = tmp_path_factory.mktemp("characters")
    rng = np.random.default_rng(7)
    paths = {}
    for name, shape in (("ann", (90, 60)), ("bob", (64, 64)), ("bob_side", (48, 80))):
        paths[name] = folder / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(paths[name])
    return paths


def characters(pictures):
    return [f"Ann={pictures['ann']}", f"Bob={pictures['bob']},{pictures['bob_side']}"]


# ------------------------------------------------------------------------------ finding characters


def test_names_are_found_as_whole_words_case_insensitively_or_from_a_prefix():
    lines = ["ANN waves", "Annabel and Joanne", "ann's hat", "[Bob] sleeps", "[] Ann is absent", "[bob, ann]  they run"]
    prompts, casts, warnings = S.cast_frames(lines, ["Ann", "Bob"])
    assert prompts == ["ANN waves", "Annabel and Joanne", "ann's hat", "sleeps", "Ann is absent", "they run"]
    assert casts == [("Ann",), (), ("Ann",), ("Bob",), (), ("Bob", "Ann")]
    assert warnings == []
    assert S.cast_frames(["[x] as written"], []) == (["[x] as written"], [()], [])  # no characters: lines untouched


def test_character_syntax():
    c = S.Character.parse("Ann Lee = a.png, b.png")
    assert (c.name, c.images) == ("Ann Lee", ("a.png", "b.png"))
    for bad in ("Ann", "=a.png", "Ann=", "Ann= , "):
        with pytest.raises(S.StoryError, match="NAME=IMAGE"):
            S.Character.parse(bad)


# -------------------------------------------------------------------------------- the acceptance run


@pytest.fixture(scope="module")
def two_characters(tiny_hub, pictures, tmp_path_factory):
    """The issue's story: 4 frames, 2 characters (a reference image each, Bob two), rounds 0..2."""
    out = tmp_path_factory.mktemp("story") / "run"
    result = S.StoryEngine(cfg(rounds=2), tiny_hub)(STORY, out, characters=characters(pictures))
    return result


def test_four_frames_two_characters_two_rounds_record_each_frames_characters(two_characters, pictures):
    result = two_characters
    assert result.complete and result.rounds_done == [0, 1, 2] and len(result.final) == 4
    record = json.loads(json.dumps(result.to_record()))
    assert record["frame_characters"] == [["Ann"], ["Bob"], ["Ann", "Bob"], []]
    assert [c["name"] for c in record["characters"]] == ["Ann", "Bob"]
    assert record["characters"][1]["images"] == [str(pictures["bob"]), str(pictures["bob_side"])]
    assert record["character_scale"] == 0.6 and record["warnings"] == []
    assert result.prompts[2] == "share bread"  # the [Ann, Bob] prefix is not drawn
    for name in result.files["characters"]:  # the references are kept beside the frames
        assert (result.output_dir / name).is_file()
    manifest = json.loads((result.output_dir / "manifest.json").read_text())
    assert manifest["arguments"]["frame_characters"] == record["frame_characters"]


def test_without_characters_the_frames_are_the_engine_before_characters(tiny_hub, tmp_path):
    """The fixture holds the frames of the engine at 83fd41a (before #27), same tiny models and settings."""
    before = np.load(FIXTURE)
    prompts = ["a girl with a red kite", "the girl runs on a hill"]
    for family, rounds in (("sd15", 2), ("sdxl", 1)):
        result = S.StoryEngine(cfg(rounds=rounds, family=family), tiny_hub)(prompts, tmp_path / family, characters=[])
        frames = np.stack([np.stack(result.round_images(r)) for r in range(rounds + 1)])
        assert np.array_equal(frames, before[family]), family
        assert result.to_record()["frame_characters"] == [[], []]


def test_a_frame_naming_no_character_in_round_0_is_plain_text_to_image(two_characters, tiny_hub, tmp_path):
    """Both adapters at scale 0 are skipped: frame 4 of round 0 is the story without characters' frame."""
    plain = S.StoryEngine(cfg(rounds=0), tiny_hub)(STORY[3:], tmp_path / "plain")
    assert np.array_equal(two_characters.round_images(0)[3], plain.final[0])
    assert not np.array_equal(two_characters.round_images(0)[0],
                              S.StoryEngine(cfg(rounds=0), tiny_hub)(STORY[:1], tmp_path / "p0").final[0])


# --------------------------------------------------------------------------------- the attention test


def _spy(monkeypatch, engine):
    """Record, at every cross-attention call, the frame being drawn, the processor's scales and its IP token
    inputs (``encoder_hidden_states = (text, [round tokens, character tokens])``), and the projections."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    calls, state = [], {"frame": None}
    original_on, original_generate = engine_module.ip_adapter_on, engine._generate

    def generate(pipe, prompt, *args, **kwargs):
        state["frame"] = prompt
        return original_generate(pipe, prompt, *args, **kwargs)

    def pre_hook(module, args, kwargs):
        states = kwargs["encoder_hidden_states"]
        calls.append({"frame": state["frame"], "round": state["round"], "scale": list(module.processor.scale),
                      "tokens": [t.detach().clone() for t in states[1]]})

    class Spied:
        def __init__(self, pipe, state_dict, copies=1):
            self.ctx, self.pipe = original_on(pipe, state_dict, copies), pipe

        def __enter__(self):
            self.ctx.__enter__()
            unet = self.pipe.unet
            state["projection"] = unet.encoder_hid_proj
            self.hooks = [m.register_forward_pre_hook(pre_hook, with_kwargs=True) for m in unet.modules()
                          if isinstance(getattr(m, "processor", None), IPAdapterAttnProcessor2_0)]

        def __exit__(self, *exc):
            for hook in self.hooks:
                hook.remove()
            return self.ctx.__exit__(*exc)

    original_round = engine.generate_round

    def generate_round(pipe, r, *args, **kwargs):
        state["round"] = r
        return original_round(pipe, r, *args, **kwargs)

    monkeypatch.setattr(engine_module, "ip_adapter_on", Spied)
    monkeypatch.setattr(engine, "_generate", generate)
    monkeypatch.setattr(engine, "generate_round", generate_round)
    return calls, state


def test_reference_tokens_reach_every_frames_cross_attention_with_the_documented_weights(tiny_hub, pictures,
                                                                                        tmp_path, monkeypatch):
    config = cfg(rounds=2, deepcache=0, guidance=7.5, character_scale=0.7)
    engine = S.StoryEngine(config, tiny_hub)
    calls, state = _spy(monkeypatch, engine)
    story = ["Ann waves", "a quiet road", "ann sleeps"]
    engine(story, tmp_path / "run", characters=[f"Ann={pictures['ann']}"])
    # Ann's identity as documented: the CLIP image embedding of her reference (IP-Adapter's preprocessing)
    encoder = engine.image_encoder()
    with torch.no_grad():
        ann = encoder(S.clip_pixels([np.asarray(Image.open(pictures["ann"]))], encoder.config.image_size)).image_embeds
        projection = state["projection"].image_projection_layers[1]
        expected = projection(torch.cat([torch.zeros_like(ann), ann]))  # [2 (CFG), 4, C]: uncond = zero embedding
    n_cross = sum(1 for k in tiny_hub.get("sd15_unet").attn_processors if k.endswith("attn2.processor"))
    for r in range(3):
        lam = config.lambda_of(r)
        for frame, names_ann in (("Ann waves", True), ("a quiet road", False), ("ann sleeps", True)):
            seen = [c for c in calls if c["round"] == r and c["frame"] == frame]
            assert len(seen) == n_cross * config.steps, (r, frame)  # every cross-attention layer, every step
            for call in seen:
                assert call["scale"] == pytest.approx([lam, 0.7 if names_ann else 0.0])
                round_tokens, character_tokens = call["tokens"]
                assert round_tokens.shape[1] == (len(story) if r else 1)  # the B previous frames (a dummy in round 0)
                if names_ann:
                    assert character_tokens.shape == (2, 1, 4, expected.shape[-1])
                    assert torch.allclose(character_tokens[:, 0], expected, atol=1e-5)
    assert config.lambda_of(0) == 0.0 and config.lambda_of(1) == pytest.approx(0.3)


# ------------------------------------------------------------------------------ resume and bad input


def test_a_killed_run_resumes_at_the_last_finished_round_with_the_same_characters(two_characters, tiny_hub,
                                                                                   pictures, tmp_path):
    class Killed(Exception):
        pass

    def kill_in_round_2(p):
        if p["round"] == 2 and p["frame"] == 1:
            raise Killed

    engine = S.StoryEngine(cfg(rounds=2), tiny_hub)
    with pytest.raises(Killed):
        engine(STORY, tmp_path / "run", characters=characters(pictures), progress=kill_in_round_2)
    resumed = engine(STORY, tmp_path / "run", characters=characters(pictures))
    assert resumed.resumed_from == 1 and resumed.complete
    assert all(np.array_equal(a, b) for a, b in zip(resumed.final, two_characters.final, strict=True))
    other = [f"Ann={pictures['bob']}", f"Bob={pictures['bob']},{pictures['bob_side']}"]
    with pytest.raises(S.StoryError, match="different arguments.*characters"):
        engine(STORY, tmp_path / "run", characters=other)


def test_bad_characters_give_clear_messages(tiny_hub, pictures, tmp_path):
    engine = S.StoryEngine(cfg(rounds=0), tiny_hub)
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(S.StoryError, match=f"character 'Ann': reference image .*{text.name}.*not an image"):
        engine(STORY, tmp_path / "a", characters=[f"Ann={text}"])
    with pytest.raises(S.StoryError, match="character 'Ann': reference image .*missing.png: no such file"):
        engine(STORY, tmp_path / "a", characters=[f"Ann={tmp_path / 'missing.png'}"])
    with pytest.raises(S.StoryError, match=r"line 2: 'Zed' is not declared; characters: Ann"):
        engine(["Ann", "[Zed] walks"], tmp_path / "a", characters=[f"Ann={pictures['ann']}"])
    ten = [f"C{i}={pictures['ann']}" for i in range(10)]
    with pytest.raises(S.StoryError, match="10 characters declared; a story takes at most 8"):
        engine(STORY, tmp_path / "a", characters=ten)
    with pytest.raises(S.StoryError, match="declared twice"):
        engine(STORY, tmp_path / "a", characters=[f"Ann={pictures['ann']}", f"ANN={pictures['bob']}"])
    with pytest.raises(S.StoryError, match="no frames"):
        engine([" "], tmp_path / "a", characters=[f"Ann={pictures['ann']}"])
    assert not (tmp_path / "a").exists()  # refused before anything was written


def test_a_character_named_in_no_frame_is_a_warning(tiny_hub, pictures, tmp_path):
    result = S.StoryEngine(cfg(rounds=0), tiny_hub)(["Ann rests"], tmp_path / "w",
                                                    characters=[f"Ann={pictures['ann']}", f"Cy={pictures['bob']}"])
    assert result.complete and result.frame_characters == [["Ann"]]
    assert result.warnings == ["character 'Cy' is named in no frame: its images are not used (name it in a line, "
                               "or start a line with [Cy])"]
    assert result.to_record()["warnings"] == result.warnings


def test_cli_characters_and_fast_preset(tiny_hub, pictures, tmp_path, capsys):
    from vision import cli
    from vision.hub import set_hub

    story = tmp_path / "story.txt"
    story.write_text("Ann flies a kite\n[Bob] reads\n", encoding="utf-8")
    base = ["--tiny", "--device", "cpu", "story", "--story", str(story), "--rounds", "1", "--steps", "2"]
    try:
        bob = f"Bob={pictures['bob']},{pictures['bob_side']}"
        assert cli.main([*base, "--output", str(tmp_path / "a"), "--character", f"Ann={pictures['ann']}",
                         "--character", bob, "--character-scale", "0.5"]) == 0
        out = capsys.readouterr().out
        assert "characters per frame: 1: Ann; 2: Bob" in out and "Memory options: VAE tiling off" in out
        manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
        assert manifest["arguments"]["frame_characters"] == [["Ann"], ["Bob"]]
        assert manifest["arguments"]["config"]["character_scale"] == 0.5
        assert cli.main([*base[:-2], "--output", str(tmp_path / "f"), "--preset", "fast"]) == 0
        assert "fast preset, product mode" in capsys.readouterr().out
        assert json.loads((tmp_path / "f" / "manifest.json").read_text())["arguments"]["config"]["steps"] == 4
        bad = tmp_path / "bad.png"
        bad.write_text("text")
        assert cli.main([*base, "--output", str(tmp_path / "b"), "--character", f"Ann={bad}"]) == 2
        assert "error: character 'Ann': reference image" in capsys.readouterr().err
        assert cli.main([*base, "--output", str(tmp_path / "b"), "--character", "Ann"]) == 2
        assert "NAME=IMAGE" in capsys.readouterr().err
        assert cli.main([*base, "--output", str(tmp_path / "c"), "--character", f"Cy={pictures['ann']}"]) == 2
        assert "error: line 2: 'Bob' is not declared; characters: Cy" in capsys.readouterr().err
        story.write_text("Ann flies a kite\n", encoding="utf-8")
        assert cli.main([*base, "--output", str(tmp_path / "c"), "--character", f"Cy={pictures['ann']}"]) == 0
        assert "warning: character 'Cy' is named in no frame" in capsys.readouterr().err
    finally:
        set_hub(tiny_hub)
