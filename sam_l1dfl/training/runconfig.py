"""The typed YAML config layer of both trainers: loader, dotted overrides and the shared base.

A training config is a tree of dataclasses whose root derives from :class:`RunConfig`
(``name``, ``output_dir``, ``seed``, and the shared ``data`` split / ``loss`` / ``train`` sections,
``train`` with each trainer's ``train_defaults``):
:class:`~sam_l1dfl.training.config.FinetuneConfig` (SAM-Med3D fine-tuning) and
:class:`~sam_l1dfl.cnn.config.CnnConfig` (the paper's CNNs).

* :func:`load_yaml` reads a YAML file (or the defaults), applies ``key=value`` overrides
  (:func:`parse_overrides`: ``train.batch_size=3``, ``prompts.boxes=true``; values are parsed as
  YAML) with :func:`merge`, builds the typed tree (:func:`from_mapping`) and validates it.
* :func:`from_mapping` checks every key and type and raises
  :class:`~sam_l1dfl.errors.ConfigError` with a one-line message naming the file and the key.
  A section missing from the mapping keeps the root's default for it (so the two configs can
  share :class:`TrainConfig` with different defaults); frozen sections (the ``preprocess``
  :class:`~sam_l1dfl.data.preprocess.IntensityConfig`) are validated as they are built.
* :meth:`RunConfig.validate_run` holds the checks both trainers share; each config's
  ``validate()`` calls it, then checks its own sections.  :meth:`RunConfig.check_outputs` is
  the run's output preflight (the run directory can be created, is not in a data folder, and
  writes over no input).
* A problem with a value set by a ``key=value`` override is blamed on the override
  (:func:`blame_override`: ``command line: train.batch_size=0: ...``), not on the YAML file.
* Trust (unpickling that can run code) is never read from a config: config files travel between
  people and run directories.  :func:`drop_trust_keys` removes every key named ``*trust*`` (the
  old ``model.trust_checkpoint`` included) from a file, a mapping or the overrides; one that asks
  for trust gets one ``warning:`` line naming the key and the file, and the run goes on untrusted.
  Trust is ``--trust`` on the command line, or ``trust=True`` in the Python API.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, TypeVar

import yaml

from sam_l1dfl.errors import ConfigError
from sam_l1dfl.formats import METRICS_FILE
from sam_l1dfl.io_utils import check_output_path, refuse_inside, refuse_overwrite
from sam_l1dfl.lossnames import normalize_loss_name

MIXED_PRECISION = ("no", "fp16", "bf16")

C = TypeVar("C")


# ---------------------------------------------------------------------- shared sections
@dataclass
class DataSplitConfig:
    """Where the labelled cases are and how the validation cases are held out."""

    root: str = "data"
    """Training cases: autoPET folder, nnU-Net dataset folder or .csv/.json manifest (labels needed)."""
    val_root: Optional[str] = None
    """Separate validation cases (same layouts); if null, ``val_fraction`` of ``root`` is held out."""
    val_fraction: float = 0.2
    val_cases: list[str] = field(default_factory=list)
    """Explicit validation case ids taken from ``root`` (overrides ``val_fraction``)."""
    cache_dir: Optional[str] = None
    """The trainer's caches (crops and embeddings, or resampled volumes); default ``<output_dir>/cache``."""
    num_workers: int = 0
    """DataLoader worker processes."""


@dataclass
class LossConfig:
    name: str = "l1dfl"
    """``l1dfl``, ``dice``, ``dicefocal``, ``dicece`` or ``focal`` (case, ``-`` and ``_`` ignored)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the loss class (:func:`sam_l1dfl.losses.make_training_loss`)."""


@dataclass
class TrainConfig:
    """The loop settings; ``val_every``/``save_every`` count optimizer steps for fine-tuning and
    epochs for the CNNs (each config sets its own defaults)."""

    epochs: int = 50
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps (also sets the schedule length)."""
    batch_size: int = 4
    """Per process; the global batch is ``batch_size × processes × grad_accum``."""
    grad_accum: int = 1
    mixed_precision: str = field(default="no", metadata={"yaml_false": "no"})
    """``no``, ``fp16`` (CUDA) or ``bf16``; a bare YAML ``no`` (read as false) means ``no``."""
    val_every: int = 200
    """Validate every N steps/epochs (and at the end); 0 = only at the end."""
    save_every: int = 200
    """``accelerator.save_state`` every N steps/epochs (and at the end)."""
    keep_last: int = 3
    log_every: int = 10
    deterministic: bool = False
    """Deterministic kernels (cuDNN deterministic, no benchmark, ``torch.use_deterministic_algorithms``
    with warnings for ops that have none): a resume continues bit for bit on a GPU too, at some
    speed.  The CPU is deterministic either way."""


@dataclass
class RunConfig:
    """The root of a training config: the run's name, where it goes, its seed (+ shared checks)."""

    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    source: Optional[str] = field(default=None, metadata={"internal": True})
    """The YAML file it came from (messages name it); not saved."""
    data: DataSplitConfig = field(default_factory=DataSplitConfig)
    """The cases and the validation split (a config may extend the section)."""
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = None  # type: ignore[assignment]  # TrainConfig(**train_defaults) after __init__
    """The loop settings; ``train_defaults`` holds the trainer's defaults."""

    train_defaults: ClassVar[dict] = {}

    def __post_init__(self):
        if self.train is None:
            self.train = TrainConfig(**self.train_defaults)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def cache_dir(self) -> Path:
        return Path(self.data.cache_dir) if self.data.cache_dir else Path(self.output_dir) / "cache"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.metadata.get("internal"):
                d.pop(f.name)
        return _plain(d)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # -------------------------------------------------------------- validation helpers
    def error(self, key: str, problem: str) -> ConfigError:
        """``ConfigError("<file>: <key>: <problem>")``."""
        return ConfigError(self.source, f"{key}: {problem}")

    def check_choice(self, key: str, value: Any, choices: tuple) -> None:
        if value not in choices:
            raise self.error(key, f"must be one of {list(choices)}, got {value!r}")

    def validate_run(self) -> None:
        """The checks both trainers share: name, validation split, ``train.*``, ``loss.name``."""
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise self.error("name", f"must be a plain folder name, got {self.name!r}")
        if not 0 <= self.data.val_fraction < 1:
            raise self.error("data.val_fraction", f"must be in [0, 1), got {self.data.val_fraction}")
        t = self.train
        for k in ("epochs", "batch_size", "grad_accum", "keep_last", "log_every"):
            if getattr(t, k) < 1:
                raise self.error(f"train.{k}", f"must be >= 1, got {getattr(t, k)}")
        for k in ("val_every", "save_every"):
            if getattr(t, k) < 0:
                raise self.error(f"train.{k}", f"must be >= 0, got {getattr(t, k)}")
        if t.max_steps is not None and t.max_steps < 1:
            raise self.error("train.max_steps", "must be >= 1 or null")
        self.check_choice("train.mixed_precision", t.mixed_precision, MIXED_PRECISION)
        try:
            normalize_loss_name(self.loss.name)
        except ConfigError as exc:
            raise self.error("loss.name", exc.problem) from None

    def validate(self):  # pragma: no cover - each config overrides it
        self.validate_run()
        return self

    def check_outputs(self, inputs: "list | tuple" = ()) -> Path:
        """Before any work: the run directory can be created, is not the data folder or inside
        it, and nothing the run writes (``config.yaml`` with other contents, ``metrics.json``,
        ``train_log.jsonl``, ``best/``, ``last/``, ``states/``) is one of ``inputs``."""
        run = check_output_path(self.run_dir, folder=True)
        for key in ("root", "val_root"):
            refuse_inside(run, getattr(self.data, key, None), f"the data folder data.{key} =",
                          "choose another output_dir or name")
        cfg_file = run / "config.yaml"
        same = cfg_file.is_file() and cfg_file.read_text() == self.to_yaml()
        refuse_overwrite([run / METRICS_FILE, run / "train_log.jsonl"] + ([] if same else [cfg_file]), inputs,
                         within=[run / "best", run / "last", run / "states"],
                         hint="choose another output_dir or name, or copy the input out of the run directory")
        return run


def _plain(x: Any) -> Any:
    """Tuples → lists, recursively (YAML ``safe_dump`` and JSON agree on lists)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# ---------------------------------------------------------------------- typed mapping
def _coerce(value: Any, tp: Any, key: str, src: "str | None", default: Any = None) -> Any:
    """Check/convert ``value`` to the annotated type ``tp`` (the small subset our configs use)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, src, default)
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, src, key, default if dataclasses.is_dataclass(default) else None)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(src, f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(src, f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(src, f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(src, f"{key}: expected a string, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(src, f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and Ellipsis not in args:
            if len(value) != len(args):
                raise ConfigError(src, f"{key}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]", src) for i, (v, a) in enumerate(zip(value, args)))
        out = [_coerce(v, args[0], f"{key}[{i}]", src) for i, v in enumerate(value)] if args else list(value)
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(src, f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    return value  # Any


def from_mapping(cls: "type[C]", data: Any, source: "str | None" = None, prefix: str = "",
                 default: "C | None" = None) -> C:
    """The dataclass ``cls`` from a (YAML) mapping: unknown keys, wrong types → ConfigError.

    Keys absent from ``data`` keep their value in ``default`` (``cls()`` when None); nested
    dataclass sections are built the same way from the default's section.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    flds = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(flds))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(source, f"unknown key(s) {', '.join(repr(where + k) for k in unknown)}; known: "
                                  + ", ".join(where + k for k in sorted(flds)))
    base = cls() if default is None else default
    kw = {}
    for name, value in data.items():
        if value is False and "yaml_false" in flds[name].metadata:  # YAML 1.1 reads a bare `no` as false
            value = flds[name].metadata["yaml_false"]
        kw[name] = _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name, source, getattr(base, name))
    try:
        return dataclasses.replace(base, **kw)
    except ConfigError as exc:  # a section that validates itself (IntensityConfig)
        raise ConfigError(source, f"{prefix or 'config'}: {exc.problem}") from None


def _split_trust(data: Any, prefix: str = "") -> "tuple[Any, list[tuple[str, Any]]]":
    """``(data without its *trust* keys, [(dotted key, value), ...] of those keys)``, at any depth."""
    if not isinstance(data, dict):
        return data, []
    out, found = {}, []
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if "trust" in str(k).lower():
            found.append((key, v))
        else:
            out[k], inner = _split_trust(v, key)
            found += inner
    return out, found


def drop_trust_keys(data: Any, source: "str | None") -> Any:
    """``data`` without its ``*trust*`` keys (at any depth); one ``warning:`` line when one asks for trust.

    Trust comes only from ``--trust`` (or ``trust=True`` in the Python API), never from a config:
    ``model.trust_checkpoint: true`` in a shared ``config.yaml`` must not let a checkpoint run code.
    A key set to false or null asks for nothing and goes silently (older saved configs hold
    ``trust_checkpoint: false``).
    """
    clean, found = _split_trust(data)
    asked = [k for k, v in found if v not in (False, None)]
    if asked:
        where = f"{source}: " if source is not None else ""
        warnings.warn(f"{where}{', '.join(asked)} ignored: trust is never read from a config; "
                      "the run goes on untrusted (pass --trust on the command line for files you trust)",
                      UserWarning, stacklevel=3)
    return clean if found else data


def config_from_mapping(cls: "type[C]", data: Any, source: "str | None" = None, validate: bool = True) -> C:
    """A root config (a :class:`RunConfig`) from a mapping, remembering ``source``; validated.
    Keys that ask for trust are dropped with a warning (:func:`drop_trust_keys`)."""
    cfg = from_mapping(cls, drop_trust_keys(data, source), source)
    cfg.source = source
    return cfg.validate() if validate else cfg


def parse_overrides(overrides: "list[str] | None", source: str = "command line") -> dict:
    """``["train.lr=3e-4", "prompts.boxes=true"]`` → nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(source, f"override {item!r} is not key=value (e.g. train.lr=3e-4)")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        if not key:
            raise ConfigError(source, f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(source, f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return out


def merge(base: dict, upd: dict) -> dict:
    """``upd`` over ``base``, section by section (``params``/``overrides`` merged one level)."""
    out = dict(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("params", "overrides"):
            out[k] = merge(out[k], v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def read_yaml_mapping(path: "str | os.PathLike") -> dict:
    """The top-level mapping of a YAML file; ConfigError naming the file otherwise."""
    src = os.fspath(path)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(src, "config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid YAML"
        raise ConfigError(src, f"invalid YAML: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(src, "top level must be a mapping")
    return data


def blame_override(exc: ConfigError, overrides: "list[str] | None") -> ConfigError:
    """``exc`` as ``command line: <override>: <problem>`` when its key was set by an override
    (the value checked is the override's, not the file's); ``exc`` unchanged otherwise."""
    items = {}
    for item in overrides or []:
        key = item.split("=", 1)[0].strip().lstrip("-")
        items[key] = item
    problem = exc.problem
    for key in sorted(items, key=len, reverse=True):
        if problem.startswith(f"{key}:"):
            return ConfigError("command line", f"{items[key]}:{problem[len(key) + 1:]}")
        if problem.startswith(f"{key}[") or f"'{key}'" in problem:
            return ConfigError("command line", f"{items[key]}: {problem}")
    return exc


def load_yaml(cls: "type[C]", path: "str | os.PathLike | None", overrides: "list[str] | None" = None) -> C:
    """Read a YAML config of type ``cls`` (its defaults if ``path`` is None), apply overrides, validate.

    A problem with a value an override set names the override (``command line:
    train.batch_size=0: must be >= 1, got 0``), not the file.
    """
    data = read_yaml_mapping(path) if path is not None else {}
    data = drop_trust_keys(data, None if path is None else os.fspath(path))
    data = merge(data, drop_trust_keys(parse_overrides(overrides), "command line"))
    try:
        return config_from_mapping(cls, data, None if path is None else os.fspath(path))
    except ConfigError as exc:
        raise blame_override(exc, overrides) from None


__all__ = ["DataSplitConfig", "LossConfig", "MIXED_PRECISION", "RunConfig", "TrainConfig", "blame_override",
           "config_from_mapping", "drop_trust_keys", "from_mapping", "load_yaml", "merge", "parse_overrides",
           "read_yaml_mapping"]
