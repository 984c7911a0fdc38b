"""The model hub: one shared instance per model, thread-safe lazy loading, tiny forward shapes."""

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from vision import tiny
from vision.hub import ModelHub, module_bytes


def test_concurrent_get_returns_one_instance_loaded_once():
    hub = ModelHub(tiny=True, device="cpu")
    barrier = threading.Barrier(4)
    got = []

    def ask():
        barrier.wait()
        got.append(hub.get("dino_b16"))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(m is got[0] for m in got)
    assert hub.load_counts["dino_b16"] == 1


def test_unknown_model_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        ModelHub(tiny=True).get("nope")


def test_tiny_models_are_identical_across_hubs():
    a = ModelHub(tiny=True, device="cpu").get("sam_b")
    b = ModelHub(tiny=True, device="cpu").get("sam_b")
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_dtype_policy_keeps_sam_fp32_on_cuda():
    hub = ModelHub(tiny=True, device="cuda")
    assert hub.dtype_for("sd15_unet") == torch.float16
    assert hub.dtype_for("sam_h") == torch.float32
    assert ModelHub(tiny=True, device="cpu").dtype_for("sd15_unet") == torch.float32


@torch.no_grad()
def test_tiny_vision_backbones_forward_shapes(tiny_hub):
    dinov2 = tiny_hub.get("dinov2_b14")
    out = dinov2(pixel_values=torch.zeros(1, 3, 840, 840), output_hidden_states=True)
    assert out.hidden_states[-1].shape == (1, 1 + 60 * 60, dinov2.config.hidden_size)

    dino = tiny_hub.get("dino_b16")
    out = dino(pixel_values=torch.zeros(2, 3, 336, 336), interpolate_pos_encoding=True)
    assert out.last_hidden_state.shape == (2, 1 + 21 * 21, dino.config.hidden_size)

    clip = tiny_hub.get("clip_b16")
    tokens = tiny_hub.get("clip_tokenizer")(["a photo of a cat.", "a dog"])
    assert tokens.shape == (2, 77)
    assert clip.encode_text(tokens).shape == (2, tiny.TINY_CLIP_EMBED)
    assert clip.encode_image(torch.zeros(1, 3, 224, 224)).shape == (1, tiny.TINY_CLIP_EMBED)


@torch.no_grad()
def test_tiny_sam_predicts_masks(tiny_hub):
    from segment_anything import SamPredictor

    predictor = SamPredictor(tiny_hub.get("sam_b"))
    predictor.set_image(np.zeros((120, 160, 3), np.uint8))
    assert predictor.features.shape[-2:] == (64, 64)
    masks, scores, logits = predictor.predict(point_coords=np.array([[80, 60]]), point_labels=np.array([1]))
    assert masks.shape == (3, 120, 160) and scores.shape == (3,) and logits.shape == (3, 256, 256)


@torch.no_grad()
def test_tiny_sd15_components_forward_shapes(tiny_hub):
    tokenizer = tiny_hub.get("sd15_tokenizer")
    ids = tokenizer(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    text = tiny_hub.get("sd15_text_encoder")(ids).last_hidden_state
    assert text.shape == (1, 77, tiny.TINY_SD_CROSS_DIM)
    vae = tiny_hub.get("sd15_vae")
    latents = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert latents.shape == (1, 4, 8, 8)
    assert vae.decode(latents).sample.shape == (1, 3, 64, 64)
    unet = tiny_hub.get("sd15_unet")
    assert len(unet.down_blocks) == 4 and len(unet.up_blocks) == 4  # SD1.5's block layout
    assert unet(latents, 10, encoder_hidden_states=text).sample.shape == (1, 4, 8, 8)


@torch.no_grad()
def test_tiny_sdxl_unet_forward_shape(tiny_hub):
    unet = tiny_hub.get("sdxl_unet")
    tok1, tok2 = tiny_hub.get("sdxl_tokenizer"), tiny_hub.get("sdxl_tokenizer_2")
    ids1 = tok1(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    ids2 = tok2(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    h1 = tiny_hub.get("sdxl_text_encoder")(ids1, output_hidden_states=True).hidden_states[-2]
    out2 = tiny_hub.get("sdxl_text_encoder_2")(ids2, output_hidden_states=True)
    context = torch.cat([h1, out2.hidden_states[-2]], dim=-1)
    cond = {"text_embeds": out2.text_embeds, "time_ids": torch.tensor([[64, 64, 0, 0, 64, 64]], dtype=torch.float32)}
    out = unet(torch.zeros(1, 4, 8, 8), 10, encoder_hidden_states=context, added_cond_kwargs=cond).sample
    assert out.shape == (1, 4, 8, 8) and len(unet.down_blocks) == 3


def test_tiny_ip_adapter_loads_into_tiny_unet(tiny_hub):
    from vision.tiny import sd15_unet

    unet = sd15_unet()  # a private copy: loading an adapter changes the UNet's processors
    state = tiny_hub.get("ip_adapter_sd15")
    unet._load_ip_adapter_weights([state])
    assert unet.encoder_hid_proj is not None
    image_embeds = tiny_hub.get("ip_image_encoder_h")(pixel_values=torch.zeros(1, 3, 224, 224)).image_embeds
    assert image_embeds.shape == (1, tiny.TINY_IMAGE_EMBED)


def test_tokenizer_matches_open_clip_vocabulary(tiny_hub):
    texts = ["a photo of a cat.", "Zürich at night, 1920s film still!"]
    ours = tiny_hub.get("sd15_tokenizer")(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    reference = tiny_hub.get("clip_tokenizer")(texts)
    end = 49407  # <|endoftext|>; SD pads with it, open_clip with 0: compare up to the first one
    for a, b in zip(ours, reference):
        n = int((b == end).nonzero()[0]) + 1
        assert n > 5 and torch.equal(a[:n], b[:n]) and (a[n:] == end).all()


def test_status_reports_loaded_models_and_memory(tiny_hub):
    tiny_hub.get("sam_b")
    rows = {r["name"]: r for r in tiny_hub.status()}
    assert rows["sam_b"]["loaded"] and rows["sam_b"]["device"] == "cpu" and rows["sam_b"]["memory_mb"] > 0
    assert rows["sam_b"]["weights"] == "tiny (random)"
    assert {name for name, row in rows.items() if not row["weights"].startswith("user: ")} == set(ModelHub.names())


def test_memory_budget_offloads_least_recently_used():
    hub = ModelHub(tiny=True, device="cpu")
    sizes = {n: module_bytes(hub.get(n)) for n in ("dino_b16", "dinov2_b14")}
    hub.memory_budget_bytes = sizes["dinov2_b14"] + sizes["dino_b16"] // 2
    hub.get("dino_b16")  # now the most recent: dinov2 must make room
    rows = {r["name"]: r for r in hub.status()}
    assert rows["dinov2_b14"]["device"] == "cpu (offloaded)"
    assert rows["dino_b16"]["device"] == "cpu"
    hub.get("dinov2_b14")  # asking again brings it back and offloads the other
    rows = {r["name"]: r for r in hub.status()}
    assert rows["dinov2_b14"]["device"] == "cpu" and rows["dino_b16"]["device"] == "cpu (offloaded)"


def test_model_lock_is_one_reentrant_lock_per_model(tiny_hub):
    from vision.hub import model_lock

    unet, sam = tiny_hub.get("sd15_unet"), tiny_hub.get("sam_b")
    assert model_lock(unet) is model_lock(unet) and model_lock(unet) is not model_lock(sam)
    got = {}

    def try_both():
        for name, model in (("unet", unet), ("sam", sam)):
            got[name] = model_lock(model).acquire(timeout=0.2)
            if got[name]:
                model_lock(model).release()

    with model_lock(unet), model_lock(unet):  # re-entrant in one thread
        other = threading.Thread(target=try_both)
        other.start()
        other.join()
    assert got == {"unet": False, "sam": True}


@pytest.mark.parametrize("name", ModelHub.names())
def test_every_model_builds_in_tiny_mode(tiny_hub, name):
    assert tiny_hub.get(name) is not None and tiny_hub.is_loaded(name)


@torch.no_grad()
def test_tiny_large_variants_forward_shapes(tiny_hub):
    clip_h = tiny_hub.get("clip_h14")
    assert clip_h.encode_image(torch.zeros(1, 3, 224, 224)).shape == (1, tiny.TINY_CLIP_EMBED)
    sam_h = tiny_hub.get("sam_h")
    assert sam_h.image_encoder(torch.zeros(1, 3, 1024, 1024)).shape[-2:] == (64, 64)
    bigg = tiny_hub.get("ip_image_encoder_bigg")
    assert bigg(pixel_values=torch.zeros(2, 3, 224, 224)).image_embeds.shape == (2, tiny.TINY_IMAGE_EMBED)
    vae = tiny_hub.get("sdxl_vae")
    assert vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean.shape == (1, 4, 8, 8)


def test_user_models_are_loaded_once_listed_and_at_most_three_kept():
    from vision.hub import MAX_USER_MODELS

    hub = ModelHub(tiny=True, device="cpu")
    made = []

    def load(i):
        made.append(i)
        return torch.nn.Linear(2, 2)

    first = hub.get_user("checkpoint:a", lambda: load(0), "a.safetensors")
    assert hub.get_user("checkpoint:a", lambda: load(9), "a.safetensors") is first and made == [0]
    rows = {r["name"]: r for r in hub.status()}
    assert rows["checkpoint:a"]["weights"] == "user: a.safetensors" and rows["checkpoint:a"]["memory_mb"] >= 0
    for i in range(1, MAX_USER_MODELS + 1):
        hub.get_user(f"checkpoint:{i}", lambda i=i: load(i), f"{i}.safetensors")
    assert not hub.is_loaded("checkpoint:a") and hub.is_loaded(f"checkpoint:{MAX_USER_MODELS}")  # least recent out


def test_the_clip_bpe_files_are_written_once_under_the_weights_folder(tmp_path, monkeypatch):
    """#20.8: every process left a 1.5 MB /tmp/vision-clip-bpe-* folder behind."""
    import tempfile

    from vision import builders

    monkeypatch.setenv("VISION_WEIGHTS_DIR", str(tmp_path / "weights"))
    before = set(Path(tempfile.gettempdir()).glob("vision-clip-bpe-*"))
    builders.clip_tokenizer_files.cache_clear()
    folder = builders.clip_tokenizer_files()
    assert folder.is_relative_to(tmp_path / "weights") and (folder / "vocab.json").is_file()
    stamp = (folder / "merges.txt").stat().st_mtime_ns
    builders.clip_tokenizer_files.cache_clear()  # a new process
    assert builders.clip_tokenizer_files() == folder and (folder / "merges.txt").stat().st_mtime_ns == stamp
    assert set(Path(tempfile.gettempdir()).glob("vision-clip-bpe-*")) == before
    assert builders.clip_tokenizer().encode("a photo of a cat")[:2] == [49406, 320]  # the tokenizer reads them
    builders.clip_tokenizer_files.cache_clear()
