"""Every engine follows the one contract of vision/engines/contract.py: the constructor, the config's
presets and validation, one call that returns a result whose record starts with engine_record's fields."""

import dataclasses
import importlib
import inspect

import numpy as np
import pytest

from vision.engines import contract
from vision.imaging import sample_image

# (module, engine class): every engine of vision/engines/
ENGINES = [("vision.engines.segment", "SegmentEngine"), ("vision.engines.ipseg", "IPSegEngine"),
           ("vision.engines.trident", "TridentEngine"), ("vision.engines.generate", "GenerateEngine"),
           ("vision.engines.story", "StoryEngine"), ("vision.engines.video", "VideoEngine")]
RECORD_FIELDS = {"engine", "method", "preset", "mode", "reference", "models", "tiny", "timings"}


def engine_class(module: str, name: str) -> type:
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("module, name", ENGINES)
def test_constructor_config_and_presets(module, name):
    engine = engine_class(module, name)
    assert issubclass(engine, contract.Engine)
    parameters = list(inspect.signature(engine.__init__).parameters.values())[1:]
    assert [(p.name, p.default) for p in parameters] == [("config", None), ("hub", None)]
    config_class = engine.CONFIG
    assert issubclass(config_class, contract.EngineConfig) and dataclasses.is_dataclass(config_class)
    assert config_class.__dataclass_params__.frozen, f"{config_class.__name__} must be frozen"
    assert {"preset", "reference"} <= {f.name for f in dataclasses.fields(config_class)}
    assert issubclass(config_class.ERROR, ValueError) and config_class.ENGINE
    assert config_class.PRESETS, f"{config_class.__name__} has no presets"
    for preset in config_class.PRESETS:
        config = config_class.from_preset(preset)
        assert isinstance(config, config_class) and config.preset == preset
        validated = config.validate()
        assert isinstance(validated, config_class) and validated.validate() == validated  # normalised once
        assert config.mode in ("reference", "product") and (config.mode == "reference") == config.reference
    assert config_class.from_preset().preset == config_class.default_preset()
    with pytest.raises(config_class.ERROR, match="preset"):
        config_class.from_preset("no-such-preset")
    with pytest.raises(config_class.ERROR, match="no_such_field"):
        config_class.from_preset(None, no_such_field=1)


@pytest.mark.parametrize("module, name", ENGINES)
def test_engine_takes_its_config_and_refuses_another(module, name, tiny_hub):
    engine = engine_class(module, name)
    made = engine(hub=tiny_hub)
    assert made.config == engine.CONFIG.from_preset().validate() and made.hub is tiny_hub and made.tiny
    with pytest.raises(TypeError, match=engine.CONFIG.__name__):
        engine(config=object(), hub=tiny_hub)


def _calls(tiny_hub, tmp_path):
    """One quick call per engine on the tiny models: (engine name, result)."""
    from vision.engines.generate import GenerateConfig, GenerateEngine
    from vision.engines.ipseg import IPSegConfig, IPSegEngine
    from vision.engines.segment import SegmentEngine
    from vision.engines.story import StoryConfig, StoryEngine
    from vision.engines.trident import TridentConfig, TridentEngine

    cat, coffee = sample_image("chelsea"), sample_image("coffee")
    yield "segment", SegmentEngine(hub=tiny_hub)(cat, points=[(100, 100)])
    yield "ipseg", IPSegEngine(IPSegConfig.from_preset("fast"), tiny_hub)(cat, coffee)
    yield "trident", TridentEngine(TridentConfig.from_preset("open", refine=False), tiny_hub)(cat, "cat; background")
    yield "generate", GenerateEngine(GenerateConfig.from_preset("default", steps=1), tiny_hub)("a cat")
    yield "story", StoryEngine(StoryConfig.from_preset("sd15", rounds=0, steps=1), tiny_hub)(["a cat"], tmp_path)
    from vision.engines.video import VideoConfig, VideoEngine, VideoPrompt
    from vision.evaluation.synthetic_video import synthetic_clip

    frames = synthetic_clip(2, size=(48, 64)).write_frames(tmp_path / "frames")
    yield "video", VideoEngine(VideoConfig.from_preset("sam2"), tiny_hub)(frames, VideoPrompt(points=[(18, 24)]))


def test_every_record_starts_with_the_shared_fields(tiny_hub, tmp_path):
    events = []
    for engine, result in _calls(tiny_hub, tmp_path):
        record = result.to_record()
        assert RECORD_FIELDS <= set(record), (engine, RECORD_FIELDS - set(record))
        assert record["engine"] == engine and record["mode"] in ("reference", "product")
        assert record["tiny"] is True and "random" in record["notice"].lower()  # one notice key everywhere
        assert isinstance(record["models"], dict) and record["models"], engine
        assert all(isinstance(v, float) for v in record["timings"].values())
        events.append(engine)
    assert events == ["segment", "ipseg", "trident", "generate", "story", "video"]


def test_progress_is_one_type_and_cancellation_stops_a_run(tiny_hub):
    from vision.engines.ipseg import IPSegConfig, IPSegEngine

    seen = []
    engine = IPSegEngine(IPSegConfig.from_preset("fast"), tiny_hub)
    engine(sample_image("chelsea"), sample_image("coffee"), progress=seen.append)
    assert seen and all(isinstance(p, contract.Progress) for p in seen)
    assert [p.fraction for p in seen] == sorted(p.fraction for p in seen) and seen[-1].fraction == 1.0

    def cancel(progress):
        raise contract.Cancelled("client gone")

    with pytest.raises(contract.Cancelled):
        engine(sample_image("chelsea"), sample_image("coffee"), progress=cancel)


def test_engine_record_and_reporter():
    from vision.engines.ipseg import IPSegConfig
    from vision.tiny import TINY_NOTICE

    record = contract.engine_record(IPSegConfig.from_preset("paper"), tiny=False, timings={"total": 1.23456},
                                    models={"sam": "sam_h"})
    assert record == {"engine": "ipseg", "method": "ipseg", "preset": "paper", "mode": "reference",
                      "reference": True, "models": {"sam": "sam_h"}, "tiny": False, "timings": {"total": 1.2346}}
    assert contract.engine_record(IPSegConfig(), tiny=True)["notice"] == TINY_NOTICE
    events = []
    report = contract.ProgressReporter(events.append)
    report(0.5, "half", target=1, targets=2)
    report(0.2, "late stage report")  # never backwards
    report(7, "over")
    report.done()
    assert [e.fraction for e in events] == [0.5, 0.5, 1.0, 1.0] and events[0]["targets"] == 2
    assert np.isclose(events[1].fraction, 0.5) and events[-1].message == "done"
