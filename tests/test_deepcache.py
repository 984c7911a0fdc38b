"""DeepCache (vision/deepcache/) on tiny SD1.5 / SDXL UNets and pipelines."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from vision import tiny
from vision.deepcache import (
    DeepCache,
    DeepCacheError,
    branch_info,
    full_steps,
    nonuniform_full_steps,
    num_branches,
    uniform_full_steps,
)

STEPS = 6
HELPER_MISSING = "the PyPI DeepCache helper is not installed (requirements.txt installs it)"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def unet():
    """A private tiny SD1.5 UNet (tests that change it must not touch the shared hub's)."""
    return tiny.sd15_unet()


@pytest.fixture(scope="module")
def sdxl_unet():
    return tiny.sdxl_unet()


def _inputs(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    kw = {"sample": torch.randn(batch, 4, 8, 8, generator=g),
          "encoder_hidden_states": torch.randn(batch, 77, model.config.cross_attention_dim, generator=g)}
    if model.config.addition_embed_type == "text_time":
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, tiny.SDXL_TINY_TEXT[1], generator=g),
                                   "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * batch)}
    return kw


def _pipe(hub, family="sd15", scheduler="ddim", img2img=False):
    from vision.engines.generate import build_pipeline

    pipe = build_pipeline(hub, family=family, scheduler=scheduler, img2img=img2img)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, prompts=("a red fox",), steps=STEPS, guidance=7.5, seed=0, **kw):
    from vision.engines.generate import make_generator

    prompts = list(prompts)
    gens = [make_generator(seed + i) for i in range(len(prompts))]
    extra = {} if "image" in kw else {"height": 64, "width": 64}
    with torch.no_grad():
        return pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                    output_type="latent", **extra, **kw).images


# ------------------------------------------------------------------------------------------- schedules


def test_uniform_schedule_indices():
    assert uniform_full_steps(10, 3) == [0, 3, 6, 9]
    assert uniform_full_steps(50, 5) == list(range(0, 50, 5))
    assert uniform_full_steps(7, 1) == list(range(7))
    assert uniform_full_steps(10, 4, first=5) == [5, 9]
    assert full_steps(12, 5) == [0, 5, 10]


# The reference's sample_from_quad_center sets (T = 50, c = 15, p = 1.4), from the issue / the spec's Errata.
REFERENCE_SETS = {
    3: [0, 3, 6, 8, 11, 13, 15, 17, 20, 22, 25, 28, 32, 35, 38, 42, 46],
    5: [0, 5, 9, 13, 17, 21, 26, 31, 37, 43],
    10: [0, 9, 17, 26, 37],
}


@pytest.mark.parametrize("interval", sorted(REFERENCE_SETS))
def test_nonuniform_schedule_is_the_references(interval):
    got = nonuniform_full_steps(50, interval, center=15, power=1.4)
    assert got == REFERENCE_SETS[interval] and len(got) == math.ceil(50 / interval)
    assert full_steps(50, interval, "non-uniform", 15, 1.4) == got


def test_nonuniform_power_search_and_fallback():
    from vision.deepcache.schedules import _quad_center, nonuniform

    # T = 50, N = 2, p = 1.3: 1.3 .. 1.26 do not give k = 25 steps, 1.3 - 3 x 0.02 does
    assert len(_quad_center(50, 25, 15, 1.3)) != 25
    steps, power = nonuniform(50, 2, 15, 1.3)
    assert power == pytest.approx(1.24) and len(steps) == 25 and list(steps) == _quad_center(50, 25, 15, power)
    # no p > 1 gives k steps (the reference raises): the uniform schedule
    assert nonuniform(30, 2, 15, 1.4) == (tuple(range(0, 30, 2)), None)
    assert nonuniform_full_steps(10, 1) == list(range(10))  # N = 1: every step
    assert nonuniform_full_steps(10, 2, center=15) == [0, 3, 5, 7, 9]  # a centre past T is the reference's too


def test_schedule_errors():
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(DeepCacheError, match="interval"):
            uniform_full_steps(10, bad)
    with pytest.raises(DeepCacheError, match="steps"):
        uniform_full_steps(0, 2)
    with pytest.raises(DeepCacheError, match="power"):
        nonuniform_full_steps(50, 5, power=1.0)
    for bad in (2.5, -1, float("nan")):
        with pytest.raises(DeepCacheError, match="centre"):
            nonuniform_full_steps(50, 5, center=bad)
    with pytest.raises(DeepCacheError, match="schedule"):
        full_steps(10, 2, schedule="random")


# ---------------------------------------------------------------------------------------- bad input


def test_bad_settings_are_clear_errors(unet, sdxl_unet):
    assert num_branches(unet) == 12 and num_branches(sdxl_unet) == 9
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="interval N must be an integer >= 1"):
            DeepCache(unet, interval=bad)
    with pytest.raises(ValueError, match=r"branch 12 is out of range.*0\.\.11"):
        DeepCache(unet, branch=12)
    with pytest.raises(ValueError, match=r"branch 9 is out of range.*0\.\.8"):
        DeepCache(sdxl_unet, branch=9)
    with pytest.raises(ValueError, match="out of range"):
        DeepCache(unet, branch=-1)
    with pytest.raises(ValueError, match="schedule"):
        DeepCache(unet, schedule="cosine")
    with pytest.raises(ValueError, match="power"):
        DeepCache(unet, schedule="nonuniform", power=0.9)
    with pytest.raises(ValueError, match="UNet2DConditionModel"):
        DeepCache(torch.nn.Linear(2, 2))
    info = branch_info(unet, 1)
    assert info["down"] == ["conv_in", "down_blocks[0].layer0"]
    assert info["up"] == ["up_blocks[3].layer1", "up_blocks[3].layer2"]
    assert info["cached"] == "input of up_blocks[3].resnets[1]"


# ------------------------------------------------------------------------------------- UNet level


@pytest.mark.parametrize("which", ["sd15", "sdxl"])
def test_full_path_equals_plain_unet_and_retrieval_path_reuses_feature(which, unet, sdxl_unet):
    """Every branch: the full path is bit-identical to the plain UNet, and a retrieval step fed the
    feature cached from the same inputs reproduces the full output (so the shallow path is exact)."""
    model = unet if which == "sd15" else sdxl_unet
    kw = _inputs(model)
    t = torch.tensor(500)
    with torch.no_grad():
        plain = model(timestep=t, **kw).sample
        for b in range(num_branches(model)):
            cache = DeepCache(model, interval=2, branch=b)
            full, feature = cache._unet_forward(None, timestep=t, **kw)
            assert torch.equal(full, plain), b
            retrieval, none = cache._unet_forward(feature, timestep=t, **kw)
            assert none is None
            assert torch.equal(retrieval, plain), b


def test_full_steps_equal_plain_unet_during_a_cached_loop(unet):
    timesteps = torch.tensor([900, 700, 500, 300, 100, 50, 10])
    with torch.no_grad():
        plain = [unet(timestep=t, **_inputs(unet, seed=i)).sample for i, t in enumerate(timesteps)]
        with DeepCache(unet, interval=3, branch=1) as cache:
            cached = [unet(timestep=t, **_inputs(unet, seed=i)).sample for i, t in enumerate(timesteps)]
    kinds = cache.last_generation()["kinds"]
    assert kinds == ["full", "partial", "partial", "full", "partial", "partial", "full"]
    for kind, a, b in zip(kinds, cached, plain):
        assert torch.equal(a, b) == (kind == "full")


def test_tuple_output_and_controlnet_residuals(unet):
    kw = _inputs(unet)
    t = torch.tensor(400)
    with torch.no_grad():
        # ControlNet-style residuals: one per skip tensor and one for the mid block
        cache = DeepCache(unet, interval=2, branch=2)
        h = unet.conv_in(kw["sample"])  # the 12 skip tensors' shapes, from a plain down pass
        skips = [h]
        emb = unet.time_embedding(unet.get_time_embed(kw["sample"], t))
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, res = block(h, emb, encoder_hidden_states=kw["encoder_hidden_states"])
            else:
                h, res = block(h, emb)
            skips += res
        down = tuple(torch.randn_like(s) * 0.1 for s in skips)
        mid = torch.randn_like(h) * 0.1
        plain = unet(timestep=t, down_block_additional_residuals=down, mid_block_additional_residual=mid, **kw)
        full, feature = cache._unet_forward(None, timestep=t, down_block_additional_residuals=down,
                                            mid_block_additional_residual=mid, **kw)
        assert torch.equal(full, plain.sample)
        again, _ = cache._unet_forward(feature, timestep=t, down_block_additional_residuals=down,
                                       mid_block_additional_residual=mid, **kw)
        assert torch.equal(again, plain.sample)
        with cache:
            out = unet(kw["sample"], t, kw["encoder_hidden_states"], return_dict=False)
        assert isinstance(out, tuple) and torch.equal(out[0], unet(timestep=t, **kw).sample)


def test_ip_adapter_conditioning():
    """IP-Adapter image tokens (the Story-Adapter engine's case) reach the shallow path too."""
    model = tiny.sd15_unet()
    model._load_ip_adapter_weights([tiny.ip_adapter_state_dict(model, tiny.TINY_IMAGE_EMBED)])
    kw = _inputs(model)
    kw["added_cond_kwargs"] = {"image_embeds": [torch.randn(2, 1, tiny.TINY_IMAGE_EMBED)]}
    t = torch.tensor(300)
    with torch.no_grad():
        plain = model(timestep=t, **kw).sample
        cache = DeepCache(model, interval=2, branch=1)
        full, feature = cache._unet_forward(None, timestep=t, **kw)
        retrieval, _ = cache._unet_forward(feature, timestep=t, **kw)
    assert torch.equal(full, plain) and torch.equal(retrieval, plain)


def test_freeu_does_not_corrupt_the_cache():
    model = tiny.sd15_unet()
    model.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    kw = _inputs(model)
    t = torch.tensor(300)
    with torch.no_grad():
        plain = model(timestep=t, **kw).sample
        for b in (5, 8, 11):  # branches whose cached feature enters FreeU blocks
            cache = DeepCache(model, interval=2, branch=b)
            full, feature = cache._unet_forward(None, timestep=t, **kw)
            kept = feature.clone()
            assert torch.equal(full, plain)
            retrieval, _ = cache._unet_forward(feature, timestep=t, **kw)
            assert torch.equal(retrieval, plain) and torch.equal(feature, kept)


def test_enable_disable_restores_the_unet_exactly(unet):
    """DeepCache attaches as one hook in diffusers' HookRegistry; disabling removes it and the UNet's
    forward is its class's again (diffusers' registry, created on first use, is the only new attribute)."""
    from diffusers.hooks import HookRegistry

    from vision.deepcache.cache import HOOK_NAME, DeepCacheHook, attached_hook

    kw = _inputs(unet)
    before = dict(unet.__dict__)
    with torch.no_grad():
        plain = unet(timestep=torch.tensor(10), **kw).sample
        cache = DeepCache(unet, interval=4, branch=0).enable()
        assert isinstance(attached_hook(unet), DeepCacheHook)
        assert HookRegistry.check_if_exists_or_initialize(unet).get_hook(HOOK_NAME) is attached_hook(unet)
        with pytest.raises(RuntimeError, match="already enabled"):
            cache.enable()
        with pytest.raises(RuntimeError, match="another DeepCache"):
            DeepCache(unet, interval=2).enable()
        cache.disable()
        cache.disable()  # idempotent
        assert attached_hook(unet) is None
        assert unet.forward.__func__ is type(unet).forward and unet.forward.__self__ is unet
        assert set(unet.__dict__) - set(before) <= {"_diffusers_hook", "forward"}
        assert all(unet.__dict__[k] is v for k, v in before.items() if k != "forward")
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in unet.modules())
        assert all("forward" not in m.__dict__ for m in unet.modules() if m is not unet)
        assert torch.equal(unet(timestep=torch.tensor(10), **kw).sample, plain)


def test_previous_instance_forward_is_restored(unet):
    marker = []

    def wrapped(*args, **kwargs):
        marker.append(1)
        return type(unet).forward(unet, *args, **kwargs)

    unet.forward = wrapped
    try:
        with DeepCache(unet, interval=2), torch.no_grad():
            unet(timestep=torch.tensor(5), **_inputs(unet))
        assert unet.__dict__["forward"] is wrapped
    finally:
        del unet.forward


def test_other_threads_see_the_plain_unet(unet):
    kw = _inputs(unet)
    ts = [torch.tensor(900), torch.tensor(800)]
    with torch.no_grad():
        plain = [unet(timestep=t, **kw).sample for t in ts]
        with DeepCache(unet, interval=5, branch=0) as cache:
            unet(timestep=torch.tensor(950), **kw)  # a full step in this thread
            results = []
            worker = threading.Thread(target=lambda: results.extend(unet(timestep=t, **kw).sample for t in ts))
            worker.start()
            worker.join()
            assert cache.last_generation()["calls"] == 1
        assert all(torch.equal(a, b) for a, b in zip(results, plain))


def test_bare_unet_restarts_and_batch_changes(unet):
    """Without a pipeline: the timestep going up, or another batch shape, starts a new generation."""
    ts = [torch.tensor(v) for v in (900, 600, 300)]
    with torch.no_grad(), DeepCache(unet, interval=3) as cache:
        for t in ts:
            unet(timestep=t, **_inputs(unet, batch=2))
        assert cache.last_generation()["kinds"] == ["full", "partial", "partial"]
        unet(timestep=torch.tensor(950), **_inputs(unet, batch=2))  # went up: new generation
        assert cache.last_generation()["kinds"] == ["full"]
        unet(timestep=torch.tensor(940), **_inputs(unet, batch=1))  # other batch: never reuse
        assert cache.last_generation()["kinds"] == ["full"]
        unet(timestep=torch.tensor(930), **_inputs(unet, batch=1))
        assert cache.last_generation()["kinds"] == ["full", "partial"]
        cache.begin()
        unet(timestep=torch.tensor(920), **_inputs(unet, batch=1))
        assert cache.last_generation()["kinds"] == ["full"]


def test_nonuniform_on_a_bare_unet_needs_the_number_of_steps(unet):
    with torch.no_grad(), DeepCache(unet, interval=2, schedule="nonuniform") as cache:
        unet(timestep=torch.tensor(900), **_inputs(unet))
        with pytest.raises(DeepCacheError, match="number of steps"):
            unet(timestep=torch.tensor(800), **_inputs(unet))
        cache.begin(num_steps=10)
        for t in range(900, 0, -90):
            unet(timestep=torch.tensor(t), **_inputs(unet))
        assert cache.last_generation()["full_steps"] == nonuniform_full_steps(10, 2, 15, 1.4)


def test_compile_friendly_full_graph(unet):
    """Both paths trace as single graphs (no graph breaks, no .item()); outputs equal eager."""
    pytest.importorskip("torch._dynamo")
    torch._dynamo.reset()
    timesteps = torch.tensor([900, 600, 300])
    with torch.no_grad():
        with DeepCache(unet, interval=2, branch=1) as cache:
            eager = [unet(timestep=t, **_inputs(unet)).sample for t in timesteps]
        with DeepCache(unet, interval=2, branch=1, compile={"backend": "eager", "fullgraph": True}) as compiled:
            traced = [unet(timestep=t, **_inputs(unet)).sample for t in timesteps]
    assert compiled.last_generation()["kinds"] == cache.last_generation()["kinds"] == ["full", "partial", "full"]
    assert all(torch.equal(a, b) for a, b in zip(eager, traced))
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------- pipelines


def test_n1_is_bitwise_identical_to_the_plain_pipeline(tiny_hub):
    pipe = _pipe(tiny_hub)
    plain = _run(pipe, ("a red fox", "a blue bird"))
    with DeepCache(pipe, interval=1, branch=0) as cache:
        cached = _run(pipe, ("a red fox", "a blue bird"))
    assert cached.dtype == torch.float32 and torch.equal(cached, plain)
    assert cache.last_generation()["full_calls"] == STEPS
    with DeepCache(pipe.unet, interval=1):  # bare UNet attach (as the Story engine does)
        assert torch.equal(_run(pipe, ("a red fox", "a blue bird")), plain)


def test_pipeline_decisions_and_detach(tiny_hub):
    from vision.deepcache.cache import attached_hook

    pipe = _pipe(tiny_hub)
    cls, unet = type(pipe), pipe.unet
    plain = _run(pipe, steps=8)
    with DeepCache(pipe, interval=3, branch=1) as cache:
        assert type(pipe) is cls and attached_hook(unet) is cache._hook  # no class swap: a diffusers hook
        cached = _run(pipe, steps=8)
        gen = cache.last_generation()
        assert gen["full_steps"] == uniform_full_steps(8, 3) and gen["calls"] == 8
        assert gen["partial_calls"] == 5
        assert not torch.equal(cached, plain)
        assert torch.isfinite(cached).all()
    assert type(pipe) is cls and attached_hook(unet) is None
    assert torch.equal(_run(pipe, steps=8), plain)


def test_nonuniform_schedule_in_a_pipeline(tiny_hub):
    pipe = _pipe(tiny_hub)
    with DeepCache(pipe, interval=4, schedule="nonuniform", center=6, power=1.4) as cache:
        _run(pipe, steps=16)
    assert cache.last_generation()["full_steps"] == nonuniform_full_steps(16, 4, 6, 1.4)


def _fresh(make_cache, run):
    with make_cache():
        return run()


@pytest.mark.parametrize("attach", ["pipeline", "unet"])
def test_batch_size_change_gives_the_fresh_result(tiny_hub, attach):
    pipe = _pipe(tiny_hub)
    target = pipe if attach == "pipeline" else pipe.unet
    make = lambda: DeepCache(target, interval=3, branch=1)  # noqa: E731
    with make() as cache:
        first = _run(pipe, ("a red fox",))
        second = _run(pipe, ("a red fox", "a green tree", "a cat"))
        assert cache.last_generation()["kinds"][0] == "full"
    assert second.shape[0] == 3
    assert torch.equal(second, _fresh(make, lambda: _run(pipe, ("a red fox", "a green tree", "a cat"))))
    assert torch.equal(first, _fresh(make, lambda: _run(pipe, ("a red fox",))))


@pytest.mark.parametrize("attach", ["pipeline", "unet"])
def test_txt2img_then_img2img_gives_the_fresh_result(tiny_hub, attach):
    from vision.engines.generate import build_pipeline

    pipe = _pipe(tiny_hub)
    i2i = build_pipeline(tiny_hub, img2img=True)
    i2i.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 64, 64)

    def make(target):
        return DeepCache(target, interval=3, branch=1)

    if attach == "pipeline":
        with make(pipe):
            _run(pipe, steps=10)
        with make(i2i) as cache:
            _run(i2i, steps=10, image=image, strength=0.5)
            second = _run(i2i, steps=10, image=image, strength=0.5)
    else:  # one cache on the shared UNet across both pipelines
        with make(pipe.unet) as cache:
            _run(pipe, steps=10)
            second = _run(i2i, steps=10, image=image, strength=0.5)
    gen = cache.last_generation()
    assert gen["calls"] == 5 and gen["kinds"][0] == "full" and gen["kinds"] == ["full", "partial", "partial",
                                                                               "full", "partial"]
    with make(i2i if attach == "pipeline" else i2i.unet):
        fresh = _run(i2i, steps=10, image=image, strength=0.5)
    assert torch.equal(second, fresh)


@pytest.mark.parametrize("scheduler", ["pndm", "euler", "dpm++", "heun"])
def test_schedulers(tiny_hub, scheduler):
    pipe = _pipe(tiny_hub, scheduler=scheduler)
    plain = _run(pipe)
    with DeepCache(pipe, interval=1) as cache:
        assert torch.equal(_run(pipe), plain)  # N = 1: exact under every scheduler
    with DeepCache(pipe, interval=2, branch=1) as cache:
        out = _run(pipe)
    gen = cache.last_generation()
    assert torch.isfinite(out).all() and not torch.equal(out, plain)
    assert gen["steps"] == STEPS and gen["full_steps"] == uniform_full_steps(STEPS, 2)
    calls = {"pndm": STEPS + 1, "heun": 2 * STEPS - 1}.get(scheduler, STEPS)
    assert gen["calls"] == calls
    if scheduler == "pndm":  # the duplicated first timestep: calls 1 and 2 share step 1's decision
        assert gen["kinds"][:4] == ["full", "partial", "partial", "full"]
    if scheduler == "heun":  # two calls per step after the first, one decision per timestep
        assert gen["kinds"][:5] == ["full", "partial", "partial", "full", "full"]


# ------------------------------------------------------------------------- step numbering (reference)


def _paper_loop(pipe, prompt, steps, interval, branch, full_rule, guidance=7.5, seed=0):
    """The paper's pipeline loop written out (horseee/DeepCache sd/pipeline_stable_diffusion.py): for i, t
    in enumerate(scheduler.timesteps), a full UNet when ``full_rule(i, T)``, else the retrieval path on
    the last full step's feature. Returns the final latents and the kinds of the calls."""
    from vision.engines.generate import make_generator

    cache = DeepCache(pipe.unet, interval=interval, branch=branch)  # used only for its UNet computation
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(prompt, "cpu", 1, True)
        text = torch.cat([uncond, cond])
        pipe.scheduler.set_timesteps(steps)
        latents = pipe.prepare_latents(1, 4, 64, 64, text.dtype, torch.device("cpu"), make_generator(seed))
        feature, kinds = None, []
        for i, t in enumerate(pipe.scheduler.timesteps):
            x = pipe.scheduler.scale_model_input(torch.cat([latents] * 2), t)
            full = feature is None or full_rule(i, steps)
            out, new = cache._unet_forward(None if full else feature, sample=x, timestep=t,
                                           encoder_hidden_states=text)
            feature = new if full else feature
            kinds.append("full" if full else "partial")
            u, c = out.chunk(2)
            latents = pipe.scheduler.step(u + guidance * (c - u), t, latents).prev_sample
    return latents, kinds


def test_reference_numbering_is_the_paper_loop_with_pndm(tiny_hub):
    """PNDM's 6 steps are 7 loop entries ([t0, t1, t1, t2, ...]): reference mode decides by the loop index
    (full at i in range(0, 6, 2); the duplicate is a step of its own, the last entry i = 6 a retrieval),
    ours by distinct timesteps (the duplicate shares step 1's decision), and the latents of reference mode
    are those of the paper's loop written out."""
    pipe = _pipe(tiny_hub, scheduler="pndm")
    with DeepCache(pipe, interval=2, branch=1, reference=True) as cache:
        ref = _run(pipe)
    gen = cache.last_generation()
    paper_kinds = ["full", "partial", "full", "partial", "full", "partial", "partial"]
    assert gen["numbering"] == "paper loop index" and gen["calls"] == gen["steps"] == STEPS + 1
    assert gen["kinds"] == paper_kinds and gen["full_steps"] == [0, 2, 4]
    with DeepCache(pipe, interval=2, branch=1) as cache:
        ours = _run(pipe)
    gen = cache.last_generation()
    assert gen["numbering"] == "distinct timesteps" and gen["steps"] == STEPS
    assert gen["kinds"] == ["full", "partial", "partial", "full", "partial", "full", "partial"]
    assert not torch.equal(ref, ours)
    paper, kinds = _paper_loop(pipe, "a red fox", STEPS, 2, 1, lambda i, T: i in range(0, T, 2))
    assert kinds == paper_kinds and torch.equal(ref, paper)


def test_reference_nonuniform_with_pndm(tiny_hub):
    pipe = _pipe(tiny_hub, scheduler="pndm")
    steps, n, c = 12, 3, 4
    expected = nonuniform_full_steps(steps, n, center=c, power=1.4)
    with DeepCache(pipe, interval=n, schedule="nonuniform", center=c, reference=True) as cache:
        ref = _run(pipe, steps=steps)
    assert cache.last_generation()["full_steps"] == expected  # loop indices 0..12, entry 12 never full
    paper, _ = _paper_loop(pipe, "a red fox", steps, n, 1, lambda i, T: i in nonuniform_full_steps(T, n, c, 1.4))
    assert torch.equal(ref, paper)


def test_reference_mode_changes_nothing_with_ddim_and_n1_stays_exact(tiny_hub):
    pipe = _pipe(tiny_hub)
    for n, b, schedule in [(2, 1, "uniform"), (3, 0, "uniform"), (2, 1, "nonuniform")]:
        outs = []
        for reference in (False, True):
            with DeepCache(pipe, interval=n, branch=b, schedule=schedule, center=2, reference=reference) as cache:
                outs.append(_run(pipe, steps=8))
            assert cache.last_generation()["steps"] == 8
        assert torch.equal(*outs)
    pndm = _pipe(tiny_hub, scheduler="pndm")
    plain = _run(pndm)
    with DeepCache(pndm, interval=1, reference=True) as cache:
        assert torch.equal(_run(pndm), plain)  # N = 1: the loop's last entry is full too
    assert cache.last_generation()["partial_calls"] == 0


def test_reference_img2img_counts_from_the_first_step_run(tiny_hub):
    """img2img at strength 0.5 runs steps 8..15 of 16: ours keeps the absolute indices of the non-uniform
    schedule over T = 16, the paper's loop numbers them 0..7 with T = 8."""
    from vision.engines.generate import build_pipeline

    i2i = build_pipeline(tiny_hub, img2img=True)
    i2i.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 64, 64)
    decided = {}
    for reference in (False, True):
        with DeepCache(i2i, interval=3, schedule="nonuniform", center=4, reference=reference) as cache:
            _run(i2i, steps=16, image=image, strength=0.5)
        decided[reference] = cache.last_generation()["full_steps"]
    assert decided[False] == [8] + [s for s in nonuniform_full_steps(16, 3, 4) if s > 8]
    assert decided[True] == [8 + i for i in nonuniform_full_steps(8, 3, 4)]


def test_sdxl_layout_pipeline(tiny_hub):
    pipe = _pipe(tiny_hub, family="sdxl")
    plain = _run(pipe, ("a lighthouse", "a boat"))
    with DeepCache(pipe, interval=1):
        assert torch.equal(_run(pipe, ("a lighthouse", "a boat")), plain)
    for branch in (0, 1, 8):
        with DeepCache(pipe, interval=3, branch=branch) as cache:
            out = _run(pipe, ("a lighthouse", "a boat"))
        assert torch.isfinite(out).all() and cache.last_generation()["partial_calls"] == 4


def test_matches_the_pypi_helper_when_installed(tiny_hub):
    helper_mod = pytest.importorskip("DeepCache", reason=HELPER_MISSING)
    pipe = _pipe(tiny_hub)
    for n, b in [(3, 0), (2, 1), (4, 2)]:
        with DeepCache(pipe, interval=n, branch=b):
            ours = _run(pipe, steps=8)
        helper = helper_mod.DeepCacheSDHelper(pipe=pipe)
        helper.set_params(cache_interval=n, cache_branch_id=b)
        helper.enable()
        try:
            theirs = _run(pipe, steps=8)
        finally:
            helper.disable()
            for m in pipe.unet.modules():  # the helper leaves bound forwards behind
                m.__dict__.pop("forward", None)
        assert (ours - theirs).abs().max() <= 1e-5


def test_pypi_helper_numbers_pndm_by_the_first_index_of_the_value(tiny_hub):
    """The third convention, documented in vision.deepcache.steps: the helper's step is
    ``list(timesteps).index(t)``, so PNDM's duplicate repeats index 1 and index 2 never occurs."""
    helper_mod = pytest.importorskip("DeepCache", reason=HELPER_MISSING)
    pipe = _pipe(tiny_hub, scheduler="pndm")
    helper = helper_mod.DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=2, cache_branch_id=1)
    helper.enable()
    try:
        theirs = _run(pipe)
    finally:
        helper.disable()
        for m in pipe.unet.modules():
            m.__dict__.pop("forward", None)
    values = pipe.scheduler.timesteps.tolist()
    first_index = lambda i, T: values.index(values[i]) % 2 == 0  # noqa: E731
    emulated, kinds = _paper_loop(pipe, "a red fox", STEPS, 2, 1, first_index)
    assert kinds == ["full", "partial", "partial", "partial", "full", "partial", "full"]
    assert (theirs - emulated).abs().max() <= 1e-5
    for reference in (False, True):  # neither of our numberings is the helper's
        with DeepCache(pipe, interval=2, branch=1, reference=reference):
            assert (_run(pipe) - theirs).abs().max() > 1e-4


# ------------------------------------------------------------------------------ attachment and upgrades


def test_unet_forward_mirrors_the_installed_diffusers():
    """Fails loudly when the installed diffusers' UNet forward (or the block/LoRA code DeepCache restates)
    differs from the version vision/deepcache/unet_forward.py mirrors; the message says what to do."""
    from vision.deepcache import unet_forward

    problem = unet_forward.mirror_problem()
    assert problem is None, problem
    assert "0.39.0" in unet_forward.__doc__ and unet_forward.MIRRORED_DIFFUSERS in unet_forward.MIRRORS


def test_a_changed_unet_forward_is_named(monkeypatch):
    from vision.deepcache import unet_forward

    recorded = dict(unet_forward.MIRRORS[unet_forward.MIRRORED_DIFFUSERS])
    recorded["diffusers.models.unets.unet_2d_condition.UNet2DConditionModel.forward"] = "0" * 16
    monkeypatch.setattr(unet_forward, "MIRRORS", {unet_forward.MIRRORED_DIFFUSERS: recorded})
    problem = unet_forward.mirror_problem.__wrapped__()
    assert problem is not None and "UNet2DConditionModel.forward" in problem
    assert "CrossAttnUpBlock2D" not in problem and "unet_forward.py mirrors (diffusers 0.39.0)" in problem


def test_an_interrupted_pipeline_call_does_not_leak_into_the_next(tiny_hub):
    """A run stopped mid-loop (e.g. a cancelled Generate) leaves a half generation; the next pipeline call
    begins a fresh one (its new scheduler.timesteps) and equals a call on a fresh cache."""
    pipe = _pipe(tiny_hub)

    def stop_at_step_3(p, i, t, tensors):
        if i == 2:
            raise KeyboardInterrupt
        return tensors

    with DeepCache(pipe, interval=3, branch=1) as cache:
        with pytest.raises(KeyboardInterrupt):
            _run(pipe, steps=8, callback_on_step_end=stop_at_step_3)
        assert cache.last_generation()["calls"] == 3
        after = _run(pipe, steps=8)
        assert cache.last_generation()["kinds"][:4] == ["full", "partial", "partial", "full"]
    with DeepCache(pipe, interval=3, branch=1):
        fresh = _run(pipe, steps=8)
    assert torch.equal(after, fresh)


def test_no_patched_internals_in_deepcache_and_generation():
    """Attachment goes through diffusers' hooks: no class swap, no instance-dict write, no private
    attribute of a third-party object assigned, anywhere in vision/deepcache or the generation engine."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "vision"
    files = sorted(root.glob("deepcache/*.py")) + sorted(root.glob("engines/generate*.py")) + sorted(
        root.glob("engines/generate/*.py"))
    bad = re.compile(r"__class__\s*=|__dict__\s*\[[^]]*\]\s*=|__dict__\.(pop|update|setdefault)|"
                     r"setattr\(|\.\b_[a-z]\w*\s*=(?!=)")
    found = [f"{f.relative_to(root)}:{n}: {line.strip()}" for f in files
             for n, line in enumerate(f.read_text().splitlines(), 1)
             if bad.search(line) and not line.lstrip().startswith("#") and "self._" not in line]
    assert not found, found
