"""Class-name lists of the eight Trident benchmarks, as data.

Each list holds the names fed to CLIP's text encoder, in the label order of the dataset's annotation
files. A class may have several names: it is written ``"name|synonym|..."`` (the project's one class
syntax, :data:`SYNONYM_SEPARATOR`) and its probability is the maximum over its names. The background
classes of VOC21 and COCO-Object are lists of stuff words (as in the ProxyCLIP/Trident reference);
Pascal Context's 60th class is the single word "background". Names follow mmseg's dataset class
names, except VOC's "boat" and "diningtable", which the reference queries as "ship" and "table"
(their ``display`` names are the dataset's).

Two versions: :data:`CLASS_LISTS` spells multi-word names with spaces ("traffic light");
:data:`REFERENCE_CLASS_LISTS` holds the reference's exact strings (its ``configs/cls_*.txt``), which run
together every multi-word name of COCO-Stuff, Cityscapes and ADE20K ("trafficlight", "chestofdrawers":
other text tokens, so other mIoU) and are otherwise the same. (The reference's Context-60 file ends with
"wood " and a trailing space; CLIP's tokenizer cleans whitespace, so "wood" gives the same tokens.)
COCO-Object's list names "bed" twice, as a background word and as class 60, in both versions: a
benchmark list is kept as it is (a user's list with a repeated name is refused).
"""

from __future__ import annotations

from dataclasses import dataclass

# The one class syntax of the app, the CLI and the library: "cat|kitten; dog; background".
CLASS_SEPARATOR = ";"
SYNONYM_SEPARATOR = "|"

# The 26 stuff words that stand for VOC21's background class.
VOC_BACKGROUND_WORDS: tuple[str, ...] = (
    'sky', 'wall', 'tree', 'wood', 'grass', 'road', 'sea', 'river', 'mountain', 'sands', 'desk', 'bed',
    'building', 'cloud', 'lamp', 'door', 'window', 'wardrobe', 'ceiling', 'shelf', 'curtain', 'stair', 'floor',
    'hill', 'rail', 'fence',
)

# The 17 stuff words that stand for COCO-Object's background class.
COCO_OBJECT_BACKGROUND_WORDS: tuple[str, ...] = (
    'sky', 'wall', 'tree', 'wood', 'grass', 'road', 'sea', 'river', 'mountain', 'sands', 'desk', 'bed',
    'building', 'cloud', 'floor', 'hill', 'rail',
)

# Pascal VOC's 20 object classes (labels 1..20 of SegmentationClass, 0..19 after reduce_zero_label).
VOC20: tuple[str, ...] = (
    'aeroplane', 'bicycle', 'bird', 'ship', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'table', 'dog',
    'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor',
)

# Pascal Context's 59 classes (labels 1..59 of SegmentationClassContext; 0 is background).
CONTEXT59: tuple[str, ...] = (
    'aeroplane', 'bag', 'bed', 'bedclothes', 'bench', 'bicycle', 'bird', 'boat', 'book', 'bottle', 'building',
    'bus', 'cabinet', 'car', 'cat', 'ceiling', 'chair', 'cloth', 'computer', 'cow', 'cup', 'curtain', 'dog',
    'door', 'fence', 'floor', 'flower', 'food', 'grass', 'ground', 'horse', 'keyboard', 'light', 'motorbike',
    'mountain', 'mouse', 'person', 'plate', 'platform', 'pottedplant', 'road', 'rock', 'sheep', 'shelves',
    'sidewalk', 'sign', 'sky', 'snow', 'sofa', 'table', 'track', 'train', 'tree', 'truck', 'tvmonitor', 'wall',
    'water', 'window', 'wood',
)

# COCO's 80 thing classes (labels 1..80 of the *_instanceTrainIds.png maps; 0 is background).
COCO_OBJECT: tuple[str, ...] = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
    'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
    'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
    'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch',
    'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard',
    'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors',
    'teddy bear', 'hair drier', 'toothbrush',
)

# COCO-Stuff's 171 classes (labels 0..170 of the *_labelTrainIds.png maps).
# The 80 things first (in COCO_OBJECT's order), then the 91 stuff classes.
COCO_STUFF: tuple[str, ...] = COCO_OBJECT + (
    'banner', 'blanket', 'branch', 'bridge', 'building-other', 'bush',
    'cabinet', 'cage', 'cardboard', 'carpet', 'ceiling-other', 'ceiling-tile', 'cloth', 'clothes', 'clouds',
    'counter', 'cupboard', 'curtain', 'desk-stuff', 'dirt', 'door-stuff', 'fence', 'floor-marble',
    'floor-other', 'floor-stone', 'floor-tile', 'floor-wood', 'flower', 'fog', 'food-other', 'fruit',
    'furniture-other', 'grass', 'gravel', 'ground-other', 'hill', 'house', 'leaves', 'light', 'mat', 'metal',
    'mirror-stuff', 'moss', 'mountain', 'mud', 'napkin', 'net', 'paper', 'pavement', 'pillow', 'plant-other',
    'plastic', 'platform', 'playingfield', 'railing', 'railroad', 'river', 'road', 'rock', 'roof', 'rug',
    'salad', 'sand', 'sea', 'shelf', 'sky-other', 'skyscraper', 'snow', 'solid-other', 'stairs', 'stone',
    'straw', 'structural-other', 'table', 'tent', 'textile-other', 'towel', 'tree', 'vegetable', 'wall-brick',
    'wall-concrete', 'wall-other', 'wall-panel', 'wall-stone', 'wall-tile', 'wall-wood', 'water-other',
    'waterdrops', 'window-blind', 'window-other', 'wood',
)

# Cityscapes' 19 evaluation classes (trainIds 0..18).
CITYSCAPES: tuple[str, ...] = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign', 'vegetation',
    'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle',
)

# ADE20K's 150 classes (labels 1..150, 0..149 after reduce_zero_label).
ADE20K: tuple[str, ...] = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass', 'cabinet',
    'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk',
    'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand',
    'path', 'stairs', 'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge',
    'bookcase', 'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove',
    'palm', 'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus',
    'towel', 'light', 'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television receiver',
    'airplane', 'dirt track', 'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle',
    'buffet', 'poster', 'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything',
    'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven',
    'ball', 'food', 'step', 'tank', 'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher',
    'screen', 'blanket', 'sculpture', 'hood', 'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan',
    'pier', 'crt screen', 'plate', 'monitor', 'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag',
)


@dataclass(frozen=True)
class ClassList:
    """The classes of one benchmark: ``names[i]`` is class i (``"name|synonym|..."``), ``background``
    the index of the background class or ``None``, ``display`` one short name per class for tables.
    A benchmark list runs as it is: a name repeated across its classes is kept (see the module docstring)."""

    names: tuple[str, ...]
    background: int | None = None
    display: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.display:
            object.__setattr__(self, "display", tuple(n.split(SYNONYM_SEPARATOR)[0].strip() for n in self.names))


_VOC_DISPLAY = tuple("boat" if n == "ship" else "diningtable" if n == "table" else n for n in VOC20)

CLASS_LISTS: dict[str, ClassList] = {
    "voc21": ClassList((SYNONYM_SEPARATOR.join(VOC_BACKGROUND_WORDS), *VOC20), 0, ("background", *_VOC_DISPLAY)),
    "context60": ClassList(("background", *CONTEXT59), 0),
    "coco_object": ClassList((SYNONYM_SEPARATOR.join(COCO_OBJECT_BACKGROUND_WORDS), *COCO_OBJECT), 0,
                             ("background", *COCO_OBJECT)),
    "voc20": ClassList(VOC20, None, _VOC_DISPLAY),
    "context59": ClassList(CONTEXT59),
    "coco_stuff": ClassList(COCO_STUFF),
    "cityscapes": ClassList(CITYSCAPES),
    "ade20k": ClassList(ADE20K),
}

# The lists whose multi-word names the reference writes run together.
RUN_TOGETHER_LISTS = ("coco_stuff", "cityscapes", "ade20k")


def _run_together(classes: ClassList) -> ClassList:
    return ClassList(tuple("".join(name.split()) for name in classes.names), classes.background, classes.display)


REFERENCE_CLASS_LISTS: dict[str, ClassList] = {
    name: _run_together(classes) if name in RUN_TOGETHER_LISTS else classes for name, classes in CLASS_LISTS.items()
}


def _corrclip_strings(preset: str, classes: ClassList) -> ClassList:
    """CorrCLIP's ``configs/cls_*.txt`` differ from the Trident reference's strings in two ways: "people"
    for "person" (all eight lists), and COCO-Object's background words without "bed" (16 words, so the
    name is no longer repeated). The displayed names stay the dataset's."""
    names = ["people" if name == "person" else name for name in classes.names]
    if preset == "coco_object":
        names[0] = SYNONYM_SEPARATOR.join(w for w in COCO_OBJECT_BACKGROUND_WORDS if w != "bed")
    return ClassList(tuple(names), classes.background, classes.display)


# The strings CorrCLIP's reference encodes (its configs/cls_*.txt), for its reference mode.
CORRCLIP_REFERENCE_CLASS_LISTS: dict[str, ClassList] = {
    name: _corrclip_strings(name, classes) for name, classes in REFERENCE_CLASS_LISTS.items()
}
