"""Story-Adapter pieces that need no pipeline: story input, config, IP-Adapter on/off the shared UNet,
GRCA = one softmax over the concatenated 4B reference tokens, reference encoding, storyboard layout."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vision.engines import story as S

# -- input and config ------------------------------------------------------------------------------


def test_load_story_file_skips_blank_lines_and_strips(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text("  a girl finds a red kite \n\n   \nthe kite flies away\n\tshe runs after it\n", encoding="utf-8")
    assert S.load_story(path) == ["a girl finds a red kite", "the kite flies away", "she runs after it"]


@pytest.mark.parametrize("story", [[], ["", "   "], "empty-file"])
def test_empty_story_is_a_clear_error(tmp_path, story):
    if story == "empty-file":
        story = tmp_path / "empty.txt"
        story.write_text("\n \n", encoding="utf-8")
    with pytest.raises(S.StoryError, match="no frames"):
        S.load_story(story)


def test_story_file_errors(tmp_path):
    with pytest.raises(S.StoryError, match="no such story file"):
        S.load_story(tmp_path / "missing.txt")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\xfa\x00")
    with pytest.raises(S.StoryError, match="UTF-8"):
        S.load_story(binary)
    with pytest.raises(S.StoryError, match="list of strings"):
        S.load_story(["ok", 3])
    with pytest.raises(S.StoryError, match="at most"):
        S.load_story(["x"] * (S.MAX_FRAMES + 1))


def test_two_hundred_frames_are_accepted():
    assert len(S.load_story([f"frame {i}" for i in range(200)])) == 200


def test_config_lambdas_styles_and_validation():
    cfg = S.StoryConfig()
    assert cfg.rounds == 10 and cfg.deepcache == 3 and cfg.negative_prompt == S.DEFAULT_NEGATIVE
    assert cfg.lambdas() == pytest.approx(np.linspace(0.3, 0.5, 10).tolist())
    assert cfg.lambda_of(0) == 0.0
    assert cfg.lambda_of(1) == pytest.approx(0.3) and cfg.lambda_of(10) == pytest.approx(0.5)
    assert S.StoryConfig(rounds=0).lambdas() == []
    assert cfg.resolved_size(tiny=False) == 512 and S.StoryConfig(family="sdxl").resolved_size(False) == 1024
    assert cfg.resolved_size(tiny=True) == S.TINY_SIZE
    assert S.StoryConfig(style="none").styled("a cat") == "a cat"
    comic = S.StoryConfig(style="comic").styled("a cat")
    assert comic.startswith(S.STYLES["comic"][0]) and comic.endswith(S.STYLES["comic"][1]) and "a cat" in comic
    for bad, match in [(dict(rounds=-1), "rounds"), (dict(style="anime"), "style"), (dict(steps=0), "steps"),
                       (dict(size=100), "multiple of 8"), (dict(family="sd3"), "family"),
                       (dict(deepcache=-2), "deepcache"), (dict(lambda_end=float("nan")), "finite")]:
        with pytest.raises(S.StoryError, match=match):
            S.StoryConfig(**bad).validate()


def test_style_templates_are_the_references():
    p = "a fox in the snow"
    assert S.StoryConfig().style == "comic"  # the reference's default
    assert S.StoryConfig(style="comic").styled(p) == (
        "best quality, high quality, comic a fox in the snow . graphic illustration, comic art, graphic novel art, "
        "vibrant, highly detailed")
    assert S.StoryConfig(style="film").styled(p) == (
        "best quality, high quality, cinematic film still, a fox in the snow . shallow depth of field, vignette, "
        "highly detailed, high budget, bokeh, cinemascope, moody, epic, gorgeous, film grain, grainy")
    assert S.StoryConfig(style="realistic").styled(p) == "best quality, high quality, a fox in the snow"
    assert S.StoryConfig(style="none").styled(p) == p
    assert S.DEFAULT_NEGATIVE == "monochrome, lowres, bad anatomy, worst quality, low quality"
    assert all(c.negative_prompt == S.DEFAULT_NEGATIVE for c in S.PRESETS.values())


def test_guidance_and_checkpoint_defaults():
    sd15, sdxl = S.StoryConfig(), S.StoryConfig(family="sdxl")
    assert sd15.guidance is None and sd15.guidance_scale() == 7.5 and sd15.base_model() == "sd15"
    assert sdxl.guidance_scale() == 5.0 and sdxl.base_model() == "realvisxl"  # the SDXL pipeline's default
    assert S.StoryConfig(family="sdxl", guidance=3.0).guidance_scale() == 3.0
    assert S.StoryConfig(family="sdxl", checkpoint="sdxl").base_model() == "sdxl"
    with pytest.raises(S.StoryError, match="not a sd15 model"):
        S.StoryConfig(checkpoint="realvisxl").validate()
    with pytest.raises(S.StoryError, match="guidance must be a finite number"):
        S.StoryConfig(guidance=float("inf")).validate()


def test_presets():
    assert set(S.PRESETS) == {"sd15", "sdxl", "reference", "fast"}
    fast = S.StoryConfig.from_preset("fast")
    assert (fast.lcm, fast.scheduler, fast.steps, fast.guidance_scale(), fast.deepcache) == (True, "lcm", 4, 1.0, 0)
    assert fast.lcm_lora() == "lcm_lora_sd15" and fast.replace(family="sdxl").lcm_lora() == "lcm_lora_sdxl"
    assert S.StoryConfig.from_preset("sd15") == S.StoryConfig()
    sdxl = S.StoryConfig.from_preset("sdxl")
    assert (sdxl.preset, sdxl.family, sdxl.base_model(), sdxl.deepcache, sdxl.reference) == (
        "sdxl", "sdxl", "realvisxl", 3, False)
    assert S.StoryConfig.from_preset("reference", rounds=2).rounds == 2
    with pytest.raises(S.StoryError, match="unknown story preset"):
        S.StoryConfig.from_preset("paper")
    with pytest.raises(S.StoryError, match="unknown story preset"):
        S.StoryConfig(preset="mine").validate()
    for name, preset in S.PRESETS.items():
        preset.validate()
        assert preset.preset == name and preset.describe().startswith(f"{name} preset, ")


def test_reference_preset_is_the_reference_run(tiny_hub):
    """jwmao1/story-adapter run.py: RealVisXL V4.0 + ip-adapter_sdxl + bigG, DDIM(scaled_linear 0.00085-0.012,
    steps_offset 1, clip_sample and set_alpha_to_one off), 50 steps, 1024^2, guidance_scale never passed
    (SDXL default 5.0), 10 rounds with linspace(0.3, 0.5, 10), comic prompts, 256^2 reference frames."""
    from diffusers import DDIMScheduler

    ref = S.StoryConfig.from_preset("reference")
    assert ref.validate() == ref
    assert ref.reference and ref.mode == "reference" and ref.describe() == "reference preset, reference mode"
    assert (ref.family, ref.base_model(), ref.steps, ref.resolved_size(tiny=False), ref.rounds) == (
        "sdxl", "realvisxl", 50, 1024, 10)
    assert ref.guidance_scale() == 5.0 and ref.deepcache == 0 and ref.reference_size == 256 and ref.style == "comic"
    assert ref.lambdas() == pytest.approx(np.linspace(0.3, 0.5, 10).tolist())
    assert S.FAMILIES["sdxl"].ip_adapter == "ip_adapter_sdxl"
    assert S.FAMILIES["sdxl"].image_encoder == "ip_image_encoder_bigg"
    scheduler = S.StoryEngine(ref, tiny_hub).pipeline().scheduler
    theirs = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                           clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    assert type(scheduler) is DDIMScheduler
    assert {k: v for k, v in scheduler.config.items() if not k.startswith("_")} == {
        k: v for k, v in theirs.config.items() if not k.startswith("_")}
    scheduler.set_timesteps(50)
    theirs.set_timesteps(50)
    assert scheduler.timesteps.tolist() == theirs.timesteps.tolist()


def test_realvisxl_weights_are_registered():
    from vision import weights
    from vision.hub import ENTRIES

    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        spec = weights.spec(f"realvisxl_{part}")
        assert spec.repo_id == "SG161222/RealVisXL_V4.0" and spec.files[0] == f"{part}/config.json"
        assert ENTRIES[f"realvisxl_{part}"].weights == f"realvisxl_{part}"
    assert weights.spec("realvisxl_unet").files[1] == "unet/diffusion_pytorch_model.fp16.safetensors"


# -- IP-Adapter on the shared UNet -----------------------------------------------------------------


def _unet_out(unet, text):
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=text).sample


def test_ip_adapter_context_restores_the_shared_unet_exactly(tiny_hub):
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    pipe = S.StoryEngine(S.StoryConfig(), tiny_hub).pipeline()
    unet = pipe.unet
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(2))
    before = _unet_out(unet, text)
    procs_before = dict(unet.attn_processors)
    proj_before, type_before = unet.encoder_hid_proj, unet.config.encoder_hid_dim_type
    n_params = sum(p.numel() for p in unet.parameters())

    with S.ip_adapter_on(pipe, tiny_hub.get("ip_adapter_sd15")):
        procs = [p for p in unet.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor2_0)]
        n_cross = sum(1 for name in procs_before if name.endswith("attn2.processor"))
        assert len(procs) == n_cross > 0
        assert all(isinstance(p, IPAdapterAttnProcessor2_0) for p in procs)
        assert unet.config.encoder_hid_dim_type == "ip_image_proj" and unet.encoder_hid_proj is not None

    after_procs = unet.attn_processors
    assert list(after_procs) == list(procs_before)
    assert all(after_procs[k] is procs_before[k] for k in procs_before)  # the very same processor objects
    assert unet.encoder_hid_proj is proj_before and unet.config.encoder_hid_dim_type == type_before
    assert sum(p.numel() for p in unet.parameters()) == n_params  # no IP weights left behind
    assert torch.equal(_unet_out(unet, text), before)


def test_ip_adapter_context_restores_after_an_error(tiny_hub):
    pipe = S.StoryEngine(S.StoryConfig(), tiny_hub).pipeline()
    unet = pipe.unet
    procs_before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"):
        with S.ip_adapter_on(pipe, tiny_hub.get("ip_adapter_sd15")):
            raise RuntimeError("boom")
    assert all(unet.attn_processors[k] is v for k, v in procs_before.items())
    assert unet.encoder_hid_proj is None


def test_grca_is_one_softmax_over_the_concatenated_4b_tokens(tiny_hub):
    """diffusers' IPAdapterAttnProcessor2_0, fed one adapter's image list [batch, B, 4, C], attends to
    all 4B tokens at once: its output equals Attn(text) + lambda * softmax over the concatenation, and
    differs from attending to the average of the B images' tokens."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe = S.StoryEngine(S.StoryConfig(), tiny_hub).pipeline()
    unet = pipe.unet
    modules = dict(unet.named_modules())
    with S.ip_adapter_on(pipe, tiny_hub.get("ip_adapter_sd15")):
        name = next(k for k in unet.attn_processors if k.endswith("attn2.processor"))
        attn = modules[name[: -len(".processor")]]
        proc = attn.processor
        pipe.set_ip_adapter_scale(0.4)
        g = torch.Generator().manual_seed(3)
        batch, B, C = 2, 3, unet.config.cross_attention_dim
        hidden = torch.randn(batch, 16, attn.to_q.in_features, generator=g)
        text = torch.randn(batch, 77, C, generator=g)
        ip = torch.randn(batch, B, 4, C, generator=g)

        seen = []
        hook = proc.to_k_ip[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape))
        with torch.no_grad():
            got = proc(attn, hidden, encoder_hidden_states=(text, [ip]))
            hook.remove()
            text_only = AttnProcessor2_0()(attn, hidden, encoder_hidden_states=text)
            heads = attn.heads
            q = attn.to_q(hidden)
            d = q.shape[-1] // heads

            def split(x):
                return x.view(batch, -1, heads, d).transpose(1, 2)

            def ref_attention(tokens):  # tokens [batch, T, C] -> one softmax over the T tokens
                k, v = split(proc.to_k_ip[0](tokens)), split(proc.to_v_ip[0](tokens))
                w = torch.softmax(split(q) @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
                return (w @ v).transpose(1, 2).reshape(batch, -1, heads * d)

            concat = ip.reshape(batch, B * 4, C)  # the 4B tokens of all B images in one sequence
            out_weight = attn.to_out[0].weight  # to_out is linear: its bias is already in text_only
            expected = text_only + 0.4 * F.linear(ref_attention(concat), out_weight)
            averaged = text_only + 0.4 * F.linear(ref_attention(ip.mean(dim=1)), out_weight)
    assert seen == [torch.Size([batch, B, 4, C])]  # the processor received all B images of one adapter
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, averaged, atol=1e-3)


# -- reference encoding ----------------------------------------------------------------------------


def test_reference_pixels_resize_then_clip_preprocess():
    frames = [np.full((64, 48, 3), v, np.uint8) for v in (0, 128, 255)]
    pixels = S.reference_pixels(frames, 256, 224)
    assert pixels.shape == (3, 3, 224, 224)
    # CLIP normalisation of a flat grey frame: (v/255 - mean) / std per channel
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])
    assert torch.allclose(pixels[1, :, 100, 100], (128 / 255 - mean) / std, atol=1e-3)


def test_encode_references_is_one_batched_call(tiny_hub):
    engine = S.StoryEngine(S.StoryConfig(), tiny_hub)
    encoder = tiny_hub.get("ip_image_encoder_h")
    calls = []
    hook = encoder.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    try:
        frames = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(5)]
        embeds = engine.encode_references(frames)
    finally:
        hook.remove()
    assert calls == [5] and embeds.shape == (5, encoder.config.projection_dim)


# -- storyboard ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, rows, cols", [(1, 1, 1), (3, 1, 3), (7, 2, 4), (12, 3, 4), (16, 4, 4),
                                           (17, 4, 5), (100, 10, 10), (200, 14, 15)])
def test_storyboard_layout(n, rows, cols):
    assert S.storyboard_layout(n) == (rows, cols)


@pytest.mark.parametrize("n", [1, 7, 12])
def test_storyboard_places_every_frame(n):
    h, w, gap = 24, 32, S.STORYBOARD_GAP
    frames = [np.full((h, w, 3), (10 * i, 255 - 10 * i, i), np.uint8) for i in range(n)]
    board = S.make_storyboard(frames)
    rows, cols = {1: (1, 1), 7: (2, 4), 12: (3, 4)}[n]
    assert board.shape == (gap + rows * (h + gap), gap + cols * (w + gap), 3)
    for i, frame in enumerate(frames):
        r, c = divmod(i, cols)
        y, x = gap + r * (h + gap), gap + c * (w + gap)
        assert np.array_equal(board[y : y + h, x : x + w], frame)
    if n == 7:  # the empty last cell stays white
        y, x = gap + 1 * (h + gap), gap + 3 * (w + gap)
        assert (board[y : y + h, x : x + w] == 255).all()
    assert (board[:gap] == 255).all() and (board[:, :gap] == 255).all()


def test_storyboard_scales_wide_grids_down():
    frames = [np.zeros((512, 512, 3), np.uint8)] * 200
    board = S.make_storyboard(frames, max_width=4096)
    assert board.shape[1] <= 4096 and board.shape[0] > 0


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "x.json"
    S.save_json(target, {"a": 1})

    def fail(f):
        f.write("partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        S.atomic_write(target, fail, mode="w")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
