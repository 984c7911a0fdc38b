"""The engine contract: what every engine under :mod:`vision.engines` has in common.

Every engine (Segment, IPSeg with its methods ``ipseg`` / ``gfsam``, Trident with ``trident`` /
``corrclip``, Generate, Story, Video) is used the same way::

    config = XConfig.from_preset("name", field=value)    # a frozen dataclass; unknown preset -> XError
    config = config.validate()                           # returns the (normalised) config; XError names the field
    engine = XEngine(config=None, hub=None)              # None: the default preset / the process's shared hub
    result = engine(inputs..., progress=callback)        # one call -> a result dataclass
    result.to_record()                                   # JSON-able; starts with :func:`engine_record`'s fields
    result.to_files()                                    # {suffix: image | mask | dict} for batch mode

* **Config.** Subclass :class:`EngineConfig` (a mixin for frozen dataclasses): set ``ENGINE`` (the name
  records and messages use), ``ERROR`` (the engine's ``ValueError`` subclass) and ``PRESETS`` (preset name
  -> field values; the first is the default), give the dataclass a ``preset`` and a ``reference`` field
  (and ``method`` where the engine has several), and implement :meth:`EngineConfig.problems` (one message
  per bad field, naming it). A preset is a mapping of field values or a config instance.
  ``reference=True`` reproduces the method's reference code, quirks included; the engine's docstring
  lists every behaviour it changes, with the reason.
* **Engine.** Subclass :class:`Engine`: its ``__init__(config=None, hub=None)`` validates the config and
  takes the shared hub; ``__call__`` runs the pipeline's numbered steps and returns the result.
* **Progress.** ``progress`` is a callable taking one :class:`Progress` (fraction of the whole call done,
  a message, and the position in each counted unit); the app hands it to ``gr.Progress``, the CLI to
  tqdm. :class:`ProgressReporter` is what engines use to emit them. A ``progress`` callable may raise
  :class:`Cancelled` (the app does when its client has gone): engines only call it between steps, and
  release what they hold on the way out, so a cancelled run stops at the next step/frame/target.
* **Record.** :func:`engine_record` builds the fields every record starts with: engine, method, preset,
  mode (``"reference"`` or ``"product"``), reference, models, tiny (and ``notice`` when tiny), timings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="EngineConfig")


# -------------------------------------------------------------------------------------------- progress
class Cancelled(Exception):
    """Raised by a ``progress`` callable to stop an engine run (its client cancelled or disconnected)."""


@dataclass(frozen=True)
class Progress:
    """One progress event of an engine call.

    ``fraction``: share of the whole call done, 0..1. ``message``: what is running now, for a user.
    ``position``: where the run is, per counted unit, e.g. ``{"target": 2, "targets": 5}`` or
    ``{"round": 1, "rounds": 10, "frame": 3, "frames": 8, "step": 20, "steps": 50}`` (done counts and
    totals; which keys an engine sends is in its docstring).
    """

    fraction: float
    message: str
    position: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def __getitem__(self, key: str) -> int:
        return self.position[key]


ProgressCallback = Callable[[Progress], Any]


class ProgressReporter:
    """Emits :class:`Progress` events to an optional callback, never going backwards.

    ``reporter(fraction, message, **position)`` clamps ``fraction`` to 0..1 and to at least the last
    fraction sent, so a caller can map sub-stages freely; ``reporter.done()`` sends ``(1.0, "done")``.
    """

    def __init__(self, callback: ProgressCallback | None):
        self.callback = callback
        self.fraction = 0.0

    def __call__(self, fraction: float, message: str, **position: int) -> None:
        self.fraction = max(self.fraction, min(max(float(fraction), 0.0), 1.0))
        if self.callback is not None:
            self.callback(Progress(self.fraction, message, MappingProxyType(dict(position))))

    def done(self, message: str = "done") -> None:
        self(1.0, message)


# ---------------------------------------------------------------------------------------------- config
class EngineConfig:
    """Mixin for an engine's frozen settings dataclass (see the module docstring)."""

    ENGINE: ClassVar[str] = ""  # the engine's name in records ("ipseg", "trident", ...)
    TITLE: ClassVar[str] = ""  # its name in messages ("IPSeg", "Trident", ...); default: ENGINE
    ERROR: ClassVar[type[ValueError]] = ValueError
    PRESETS: ClassVar[Mapping[str, Any]] = {}  # name -> field values (a mapping) or a config instance

    @classmethod
    def default_preset(cls) -> str:
        return next(iter(cls.PRESETS))

    @classmethod
    def from_preset(cls: type[C], name: str | None = None, **changes: Any) -> C:
        """The named preset (default: the first) with ``changes``; ``preset`` records the name."""
        name = cls.default_preset() if name is None else name
        if name not in cls.PRESETS:
            raise cls.ERROR(f"unknown {cls.TITLE or cls.ENGINE} preset {name!r}; presets: {', '.join(cls.PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise cls.ERROR(f"unknown {cls.TITLE or cls.ENGINE} setting(s): {', '.join(unknown)}")
        preset = cls.PRESETS[name]
        if isinstance(preset, cls):
            return dataclasses.replace(preset, preset=name, **changes)
        return cls(**{"preset": name, **preset, **changes})

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    def problems(self) -> list[str]:
        """One message per unusable field, naming it (empty when the settings are usable)."""
        return []

    def normalised(self: C) -> C:
        """The same settings in canonical spelling (e.g. scheduler aliases resolved); called by validate."""
        return self

    def validate(self: C) -> C:
        """The config itself (normalised); raises ``ERROR`` listing every unusable field."""
        problems = self.problems()
        if problems:
            raise self.ERROR(f"invalid {self.TITLE or self.ENGINE} settings: " + "; ".join(problems))
        return self.normalised()

    @property
    def mode(self) -> str:
        """``"reference"`` (the reference code's behaviour) or ``"product"`` (the project's)."""
        return "reference" if getattr(self, "reference", False) else "product"


# ---------------------------------------------------------------------------------------------- engine
class Engine:
    """Base of every engine: ``Engine(config=None, hub=None)``; subclasses set ``CONFIG`` and ``__call__``."""

    CONFIG: ClassVar[type[EngineConfig]] = EngineConfig

    def __init__(self, config: EngineConfig | None = None, hub: Any = None):
        from vision.hub import get_hub

        if config is not None and not isinstance(config, self.CONFIG):
            raise TypeError(f"{type(self).__name__} takes a {self.CONFIG.__name__}, not {type(config).__name__}")
        self.config = (config if config is not None else self.CONFIG.from_preset()).validate()
        self.hub = hub if hub is not None else get_hub()

    @property
    def tiny(self) -> bool:
        """The hub's models are tiny random-weight ones (every output is noise)."""
        return bool(getattr(self.hub, "tiny", False))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- record
def engine_record(config: EngineConfig, *, tiny: bool, timings: Mapping[str, float] | None = None,
                  models: Mapping[str, str] | None = None, method: str | None = None) -> dict[str, Any]:
    """The fields every result record starts with.

    ``engine``, ``method`` (``config.method``, else ``method``, else the engine's name), ``preset``,
    ``mode`` (``"reference"`` / ``"product"``), ``reference``, ``models`` (role -> hub name),
    ``tiny`` (+ ``notice`` when the models are tiny random-weight ones), ``timings`` (seconds, 4 digits).
    """
    from vision.tiny import TINY_NOTICE

    record: dict[str, Any] = {
        "engine": config.ENGINE,
        "method": getattr(config, "method", None) or method or config.ENGINE,
        "preset": getattr(config, "preset", None),
        "mode": config.mode,
        "reference": bool(getattr(config, "reference", False)),
        "models": dict(models or {}),
        "tiny": bool(tiny),
        "timings": {k: round(float(v), 4) for k, v in (timings or {}).items()},
    }
    if tiny:
        record["notice"] = TINY_NOTICE
    return record
