"""Few-shot segmentation datasets (PerSeg, FSS-1000, COCO-20i, PASCAL-5i) and their seeded episodes.

Folder layouts (``--root`` points at the folder that holds the first entries; these are the layouts the
datasets are published in, as PerSAM, HSNet and Matcher read them):

=========  ==========================================  =====================================================
dataset    root holds                                  classes, folds and masks
=========  ==========================================  =====================================================
perseg     ``Images/<object>/00.jpg, 01.jpg ...``      PerSAM's PerSeg: 40 object folders. Mask pixel > 0 =
           ``Annotations/<object>/00.png ...``         object. The first K images (sorted; ``00`` for one
                                                       shot, as PerSAM) are the prompts, every other image
                                                       of the object is one query.
fss        ``<class>/1.jpg, 1.png, ... 10.jpg, 10.png``  FSS-1000 (folder per class). Mask >= 128 = object.
           ``test.txt`` (or ``splits/fss/test.txt``    The test split: HSNet's list of 240 class names, one
           or ``--split FILE``)                        per line. Every image of a test class is one query;
                                                       its K prompts are drawn (seeded) from the class's
                                                       other images.
coco       ``val2014/COCO_val2014_*.jpg``              HSNet's COCO2014 layout: semantic masks, pixel = COCO
           ``annotations/val2014/COCO_val2014_*.png``  class id 1..80 (COCO's category order), 0 background.
                                                       Fold k = classes c with (c - 1) % 4 == k (HSNet's
                                                       interleaved COCO-20i split). Episode: a random fold
                                                       class, a random image of it (query), K other random
                                                       images of it (prompts). The class -> images index is
                                                       read from the masks (cached in ``--out``).
pascal     ``JPEGImages/*.jpg``                        VOC2012 with SBD's ``SegmentationClassAug`` (pixel =
           ``SegmentationClassAug/*.png``              class 1..20, 255 = boundary, ignored in every count).
           ``splits/pascal/val/fold{k}.txt``           Fold k = classes 5k+1..5k+5. Queries: HSNet's fold
           (else ``ImageSets/Segmentation/val.txt``)   list (``name__class`` lines), episode i takes entry
                                                       i mod its length; without it, every (val image, fold
                                                       class present) pair. Prompts: K other random images
                                                       of the class.
=========  ==========================================  =====================================================

Episodes are drawn with ``numpy.random.default_rng([seed, fold])``: the same seed gives the same list
on every machine (it is written to ``episodes.jsonl`` beside the results and can be given back with
``--episode-file``). The protocol is HSNet's (1000 episodes per COCO/PASCAL fold, one per test image for
FSS-1000), the draws are our own, so the list is not HSNet's exact list. Prompts are drawn without
replacement (HSNet's FSS loader may repeat a prompt image in k-shot episodes). Images are used as
stored (no EXIF rotation), as the masks were drawn on them; a mask of another size than its image is
an error that names the file.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vision.metrics import IGNORE_INDEX, DatasetError, load_label

DATASETS = ("perseg", "fss", "coco", "pascal")
FOLDS = {"perseg": [None], "fss": [None], "coco": [0, 1, 2, 3], "pascal": [0, 1, 2, 3]}
DEFAULT_EPISODES = {"perseg": None, "fss": None, "coco": 1000, "pascal": 1000}  # None: one per query image


@dataclass(frozen=True)
class Episode:
    """One few-shot episode: K prompt images (with masks) of a class and one query image.

    Paths are relative to the dataset root; ``label`` is the class's pixel value in the masks (COCO,
    PASCAL) or None for binary masks (PerSeg, FSS-1000)."""

    id: int
    dataset: str
    fold: int | None
    category: str
    label: int | None
    query: str
    supports: tuple[str, ...]

    def to_record(self) -> dict:
        return {**asdict(self), "supports": list(self.supports)}

    @classmethod
    def from_record(cls, record: dict) -> Episode:
        return cls(int(record["id"]), record["dataset"], record["fold"], record["category"], record["label"],
                   record["query"], tuple(record["supports"]))


@dataclass
class EpisodeMasks:
    """Masks of an episode: prompts and query as bool [H, W]; ``ignore`` marks query pixels left out."""

    supports: list[np.ndarray]
    query: np.ndarray
    ignore: np.ndarray | None


def _numeric_key(path: Path) -> tuple:
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.stem)


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: not a readable image ({err})") from None


def load_rgb(path: Path) -> np.ndarray:
    """An image file as stored (no EXIF rotation, like the masks drawn on it) -> RGB uint8 [H, W, 3]."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: not a readable image ({err})") from None


class FewShotDataset(ABC):
    """A dataset root in one of the layouts of the module docstring (each layout a subclass)."""

    name = ""
    image_dir = ""
    mask_dir = ""
    image_suffix = ".jpg"
    mask_suffix = ".png"

    def __init__(self, root: str | Path, cache_dir: str | Path | None = None, split: str | Path | None = None):
        self.root = Path(root)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.split = Path(split) if split is not None else None
        if not self.root.is_dir():
            raise DatasetError(f"{self.root} is not a folder: --root must be the {self.name} dataset folder "
                               f"(layouts: vision/evaluation/fewshot_datasets.py)")
        for sub in dict.fromkeys(d for d in (self.image_dir, self.mask_dir) if d):
            if not (self.root / sub).is_dir():
                raise DatasetError(f"{self.root / sub} is not a folder: the {self.name} layout keeps its "
                                   f"{'images' if sub == self.image_dir else 'masks'} there")

    # -- paths and masks ------------------------------------------------------------------------------
    def mask_of(self, image: str) -> str:
        """The mask's path (relative to the root) of an image path (relative to the root)."""
        stem = image[len(self.image_dir) + 1:] if self.image_dir else image
        stem = stem[: -len(self.image_suffix)]
        return f"{self.mask_dir}/{stem}{self.mask_suffix}" if self.mask_dir else f"{stem}{self.mask_suffix}"

    def binarize(self, raw: np.ndarray, label: int | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(object mask, ignored pixels or None) from a mask file's values."""
        return raw > 0, None

    def read_mask(self, image: str) -> np.ndarray:
        path = self.root / self.mask_of(image)
        if not path.is_file():
            raise DatasetError(f"{path} is missing (the mask of {self.root / image})")
        try:
            return load_label(path)
        except (OSError, ValueError) as err:
            raise DatasetError(f"{path}: not a readable mask ({err})") from None

    def _labels(self, image: str) -> set[int]:
        """The pixel values of an image's mask."""
        return set(np.unique(self.read_mask(image)).tolist())

    def masks(self, episode: Episode) -> EpisodeMasks:
        """The binary masks of an episode, each checked against its image's size."""
        supports = [self._checked(s, episode.label)[0] for s in episode.supports]
        query, ignore = self._checked(episode.query, episode.label)
        return EpisodeMasks(supports, query, ignore)

    def _checked(self, image: str, label: int | None) -> tuple[np.ndarray, np.ndarray | None]:
        image_path = self.root / image
        if not image_path.is_file():
            raise DatasetError(f"{image_path} is missing (listed in the episodes)")
        raw = self.read_mask(image)
        h, w = image_size(image_path)
        if raw.shape != (h, w):
            raise DatasetError(f"{self.root / self.mask_of(image)} is {raw.shape[1]}x{raw.shape[0]} but its image "
                               f"{image_path} is {w}x{h}: a mask must have its image's size")
        return self.binarize(raw, label)

    # -- episodes -------------------------------------------------------------------------------------
    def folds(self) -> list[int | None]:
        return FOLDS[self.name]

    @abstractmethod
    def episodes(self, fold: int | None, shots: int, count: int | None, seed: int) -> list[Episode]:
        """The episodes of ``fold`` (None: the dataset has no folds), ``shots`` supports each, ``count`` of
        them (None: every query), drawn with ``seed``."""

    def _episode(self, i: int, fold: int | None, category: str, label: int | None, query: str,
                 supports: Sequence[str]) -> Episode:
        return Episode(i, self.name, fold, category, label, query, tuple(supports))

    def _cached_index(self, name: str, images: list[str], labels_of: Callable[[str], set[int]]) -> dict[int, list[str]]:
        """class label -> images holding it, read from the masks once and cached in ``cache_dir``."""
        cache = self.cache_dir / f"class_index_{name}.json" if self.cache_dir is not None else None
        if cache is not None and cache.is_file():
            data = json.loads(cache.read_text(encoding="utf-8"))
            if data.get("root") == str(self.root.resolve()) and data.get("images") == len(images):
                return {int(k): v for k, v in data["index"].items()}
        from tqdm.auto import tqdm

        index: dict[int, list[str]] = {}
        for image in tqdm(images, desc=f"indexing {name} masks", unit="mask", leave=False):
            for label in sorted(labels_of(image)):
                index.setdefault(label, []).append(image)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"root": str(self.root.resolve()), "images": len(images),
                                         "index": index}), encoding="utf-8")
        return index


def _draw_supports(rng: np.random.Generator, pool: Sequence[str], query: str, shots: int) -> list[str]:
    others = [p for p in pool if p != query]
    picks = rng.choice(len(others), size=shots, replace=False)
    return [others[int(i)] for i in picks]


def _enough(pool: dict[str, list[str]], shots: int, where: str) -> dict[str, list[str]]:
    kept = {c: imgs for c, imgs in pool.items() if len(imgs) > shots}
    if not kept:
        raise DatasetError(f"empty split: no class of {where} has the {shots + 1} images a {shots}-shot episode "
                           "needs (K prompts + 1 query)")
    return kept


class PerSeg(FewShotDataset):
    name, image_dir, mask_dir = "perseg", "Images", "Annotations"

    def objects(self) -> dict[str, list[str]]:
        images = self.root / self.image_dir
        out = {}
        for folder in sorted(p for p in images.iterdir() if p.is_dir()):
            files = sorted(folder.glob(f"*{self.image_suffix}"), key=_numeric_key)
            out[folder.name] = [f"{self.image_dir}/{folder.name}/{f.name}" for f in files]
        if not any(out.values()):
            raise DatasetError(f"empty split: no object folder with *{self.image_suffix} images under {images}")
        return out

    def episodes(self, fold: int | None, shots: int, count: int | None, seed: int) -> list[Episode]:
        out: list[Episode] = []
        for name, images in _enough(self.objects(), shots, str(self.root / self.image_dir)).items():
            supports, queries = images[:shots], images[shots:]
            out += [self._episode(len(out) + i, None, name, None, q, supports) for i, q in enumerate(queries)]
        return out[:count] if count is not None else out


class FSS1000(FewShotDataset):
    name = "fss"

    def binarize(self, raw: np.ndarray, label: int | None) -> tuple[np.ndarray, np.ndarray | None]:
        return raw >= 128, None

    def split_file(self) -> Path:
        candidates = [self.split] if self.split is not None else [self.root / "test.txt",
                                                                   self.root / "splits" / "fss" / "test.txt"]
        for path in candidates:
            if path.is_file():
                return path
        raise DatasetError(f"{candidates[0]} not found: FSS-1000's test split lists its class names, one per "
                           "line (HSNet's splits/fss/test.txt); put it there or give --split FILE")

    def classes(self) -> dict[str, list[str]]:
        split = self.split_file()
        names = [line.strip() for line in split.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not names:
            raise DatasetError(f"empty split: {split} lists no class")
        out = {}
        for name in names:
            folder = self.root / name
            if not folder.is_dir():
                raise DatasetError(f"{folder} is not a folder (class {name!r} is listed in {split})")
            files = sorted(folder.glob(f"*{self.image_suffix}"), key=_numeric_key)
            out[name] = [f"{name}/{f.name}" for f in files]
        return out

    def episodes(self, fold: int | None, shots: int, count: int | None, seed: int) -> list[Episode]:
        rng = np.random.default_rng([seed, 0])
        out: list[Episode] = []
        for name, images in _enough(self.classes(), shots, str(self.split_file())).items():
            for query in images:
                out.append(self._episode(len(out), None, name, None, query, _draw_supports(rng, images, query, shots)))
        return out[:count] if count is not None else out


class COCO20i(FewShotDataset):
    name, image_dir, mask_dir = "coco", "val2014", "annotations/val2014"

    @staticmethod
    def fold_labels(fold: int) -> list[int]:
        """COCO class ids (1..80) of fold k: (c - 1) % 4 == k."""
        return [c for c in range(1, 81) if (c - 1) % 4 == fold]

    def binarize(self, raw: np.ndarray, label: int | None) -> tuple[np.ndarray, np.ndarray | None]:
        return raw == label, None

    def category(self, label: int) -> str:
        from vision.classnames import COCO_OBJECT

        return COCO_OBJECT[label - 1]

    def index(self) -> dict[int, list[str]]:
        masks = self.root / self.mask_dir
        images = sorted(f"{self.image_dir}/{p.stem}{self.image_suffix}" for p in masks.glob(f"*{self.mask_suffix}"))
        if not images:
            raise DatasetError(f"empty split: no *{self.mask_suffix} mask under {masks}")
        return self._cached_index("coco_val2014", images, lambda img: self._labels(img) - {0})

    def episodes(self, fold: int | None, shots: int, count: int | None, seed: int) -> list[Episode]:
        index = self.index()
        pool = _enough({str(c): index.get(c, []) for c in self.fold_labels(fold)}, shots, f"COCO-20i fold {fold}")
        labels = sorted(int(c) for c in pool)
        rng = np.random.default_rng([seed, fold])
        out = []
        for i in range(count or 1000):
            label = labels[int(rng.integers(len(labels)))]
            images = pool[str(label)]
            query = images[int(rng.integers(len(images)))]
            out.append(self._episode(i, fold, self.category(label), label, query,
                                     _draw_supports(rng, images, query, shots)))
        return out


class PASCAL5i(FewShotDataset):
    name, image_dir, mask_dir = "pascal", "JPEGImages", "SegmentationClassAug"

    @staticmethod
    def fold_labels(fold: int) -> list[int]:
        """VOC class ids (1..20) of fold k: 5k+1..5k+5."""
        return list(range(5 * fold + 1, 5 * fold + 6))

    def binarize(self, raw: np.ndarray, label: int | None) -> tuple[np.ndarray, np.ndarray | None]:
        return raw == label, raw == IGNORE_INDEX

    def category(self, label: int) -> str:
        from vision.classnames import CLASS_LISTS

        return CLASS_LISTS["voc20"].display[label - 1]

    def _image(self, name: str) -> str:
        return f"{self.image_dir}/{name}{self.image_suffix}"

    def queries(self, fold: int) -> list[tuple[str, int]]:
        """(image, class label) pairs of fold k, from HSNet's fold list or derived from val.txt."""
        fold_list = self.root / "splits" / "pascal" / "val" / f"fold{fold}.txt"
        if fold_list.is_file():
            pairs = []
            for n, line in enumerate(fold_list.read_text(encoding="utf-8").split(), 1):
                name, sep, label = line.rpartition("__")
                if not sep or not label.isdigit():
                    raise DatasetError(f"{fold_list} line {n}: expected NAME__CLASS, got {line!r}")
                pairs.append((self._image(name), int(label)))
            source = fold_list
        else:
            source = self.root / "ImageSets" / "Segmentation" / "val.txt"
            if not source.is_file():
                raise DatasetError(f"{fold_list} not found, nor {source}: the pascal layout lists its val images "
                                   "in one of them")
            names = [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
            index = self._cached_index(f"pascal_{source.stem}", [self._image(n) for n in names],
                                       lambda img: self._labels(img) - {0, IGNORE_INDEX})
            pairs = [(img, c) for c in self.fold_labels(fold) for img in index.get(c, [])]
        pairs = [(img, c) for img, c in pairs if c in self.fold_labels(fold)]
        if not pairs:
            raise DatasetError(f"empty split: {source} has no image of the fold {fold} classes "
                               f"{self.fold_labels(fold)}")
        return pairs

    def episodes(self, fold: int | None, shots: int, count: int | None, seed: int) -> list[Episode]:
        pairs = self.queries(fold)
        pool: dict[str, list[str]] = {}
        for img, c in pairs:
            pool.setdefault(str(c), [])
            if img not in pool[str(c)]:
                pool[str(c)].append(img)
        pool = _enough(pool, shots, f"PASCAL-5i fold {fold}")
        pairs = [(img, c) for img, c in pairs if str(c) in pool]
        rng = np.random.default_rng([seed, fold])
        out = []
        for i in range(count or 1000):
            query, label = pairs[i % len(pairs)]
            out.append(self._episode(i, fold, self.category(label), label, query,
                                     _draw_supports(rng, pool[str(label)], query, shots)))
        return out


LAYOUTS: dict[str, type[FewShotDataset]] = {"perseg": PerSeg, "fss": FSS1000, "coco": COCO20i, "pascal": PASCAL5i}


def open_dataset(name: str, root: str | Path, cache_dir: str | Path | None = None,
                 split: str | Path | None = None) -> FewShotDataset:
    if name not in LAYOUTS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[name](root, cache_dir=cache_dir, split=split)


def make_episodes(dataset: FewShotDataset, folds: Sequence[int | None], shots: int, count: int | None,
                  seed: int) -> list[Episode]:
    """Every episode of the requested folds, numbered 0.. per fold (deterministic for a seed)."""
    if shots < 1:
        raise DatasetError(f"--shots must be at least 1, got {shots}")
    known = dataset.folds()
    bad = [f for f in folds if f not in known]
    if bad:
        raise DatasetError(f"{dataset.name} has folds {known}, not {bad}")
    return [e for fold in folds for e in dataset.episodes(fold, shots, count, seed)]


def write_episodes(path: str | Path, episodes: Sequence[Episode]) -> None:
    Path(path).write_text("".join(json.dumps(e.to_record()) + "\n" for e in episodes), encoding="utf-8")


def read_episodes(path: str | Path, dataset: str) -> list[Episode]:
    """Episodes written by an earlier run (``episodes.jsonl``), for a run on exactly the same list."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such episode file")
    episodes = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            episode = Episode.from_record(json.loads(line))
        except (ValueError, KeyError, TypeError) as err:
            raise DatasetError(f"{path} line {n}: not an episode record ({err})") from None
        if episode.dataset != dataset:
            raise DatasetError(f"{path} line {n}: an episode of {episode.dataset!r}, not of {dataset!r}")
        episodes.append(episode)
    if not episodes:
        raise DatasetError(f"empty split: {path} holds no episode")
    return episodes


def category_names(episodes: Sequence[Episode]) -> list[str]:
    """Class names in first-seen order."""
    return list(dict.fromkeys(e.category for e in episodes))

