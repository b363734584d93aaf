"""A sweep's settings and search space (params.yaml `sweep:`), what Optuna draws from it, and how a drawn
configuration becomes params.yaml values and the `dvc exp run -S ...` that reruns it as a whole pipeline.

Takes plain values (the command reads params.yaml); errors name the key as the user types it (`sweep.space.train.lr`).
"""

import copy
import json
import shlex
from dataclasses import dataclass

import numpy as np

from imgpipe import params as P
from imgpipe.errors import ConfigError

OBJECTIVES = {"val_accuracy": "maximize", "val_loss": "minimize"}  # the kept epoch's figure on the validation split
PRUNERS = ("median", "halving", "none")
SAMPLERS = ("tpe", "grid")  # Optuna's TPE (Bayesian), or a grid drawn in a seeded random order: the baseline
SCHEDULE_LENGTH = ("epochs", "schedule")  # settings that change how a trial's learning rate runs its course


@dataclass(frozen=True)
class Dimension:
    """One searched params.yaml key: a range (low..high, on a log scale or in whole numbers) or a list of choices."""

    key: str  # train.lr, models.cnn.channels, ...
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple | None = None

    @property
    def encoded(self) -> bool:
        """Whether the choices are drawn as their JSON text: Optuna stores and compares plain scalars only, not
        a list of channels."""
        return not all(value is None or isinstance(value, (bool, int, float, str)) for value in self.choices)

    @property
    def options(self) -> list:
        """The choices as Optuna draws them."""
        return [json.dumps(value) for value in self.choices] if self.encoded else list(self.choices)

    def suggest(self, trial):
        """The value an Optuna trial draws."""
        if self.choices is not None:
            drawn = trial.suggest_categorical(self.key, self.options)
            return json.loads(drawn) if self.encoded else drawn
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def grid(self, points: int) -> list:
        """The values a grid tries: the choices, or `points` values evenly spread over the range (on its scale)."""
        if self.choices is not None:
            return self.options
        ends = np.log([self.low, self.high]) if self.log else np.array([self.low, self.high])
        values = np.linspace(*ends, points)
        values = np.exp(values) if self.log else values
        return sorted({int(round(v)) for v in values}) if self.integer else [float(f"{v:.6g}") for v in values]  # no 0.1000...02


@dataclass(frozen=True)
class SweepConfig:
    """params.yaml `sweep:`."""

    variant: str  # whose settings are searched and whose validation figure is the objective
    objective: str  # val_accuracy or val_loss
    trials: int  # in all, over every worker and machine sharing the study
    workers: int  # processes on this machine running trials side by side
    sampler: str  # tpe or grid
    grid_points: int  # grid: values tried per range
    pruner: str  # median, halving or none
    startup_trials: int  # trials never pruned: the yardstick the pruner compares with
    warmup_epochs: int  # epochs no trial is pruned after: the pruner first judges one after epoch warmup_epochs + 1
    seed: int  # the sampler's seed (TPE: with the worker's index and the trials held; a grid: the order of its points)
    storage: str | None  # a database URL (None: sqlite at the project root)
    study: str | None  # the study's name (None: <experiment>-<variant>)
    space: tuple[Dimension, ...]

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.objective]


def _number(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"params.yaml: {key}: must be a number, got {value!r}")
    return value


def dimension(key: str, spec) -> Dimension:
    where = f"sweep.space.{key}"
    if key.startswith("data."):
        raise ConfigError(f"params.yaml: {where}: data settings change the prepared data, which every trial shares; "
                          "compare them with a DVC grid (dvc exp run --queue -S ...)")
    if not key.startswith(("train.", "models.")) or key in ("train.variants", "train.seeds"):
        raise ConfigError(f"params.yaml: {where}: only train.* and models.* settings can be searched")
    if not isinstance(spec, dict):
        raise ConfigError(f"params.yaml: {where}: must be {{low: .., high: .., log: true}} or {{choices: [..]}}, got {spec!r}")
    unknown = set(spec) - {"low", "high", "log", "int", "choices"}
    if unknown:
        raise ConfigError(f"params.yaml: {where}.{sorted(unknown)[0]}: unknown; valid: low, high, log, int, choices")
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise ConfigError(f"params.yaml: {where}: choices or a range (low, high, log, int), not both")
        if not isinstance(spec["choices"], list) or len(spec["choices"]) < 2:
            raise ConfigError(f"params.yaml: {where}.choices: must list two values or more (one is no search: set it in "
                              f"params.yaml), got {spec['choices']!r}")
        return Dimension(key, choices=tuple(spec["choices"]))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"params.yaml: {where}: needs low and high (or choices)")
    low, high = _number(spec["low"], f"{where}.low"), _number(spec["high"], f"{where}.high")
    for flag in ("log", "int"):  # YAML 1.2 reads `log: no` as the text 'no', which bool() takes for true
        if not isinstance(spec.get(flag, False), bool):
            raise ConfigError(f"params.yaml: {where}.{flag}: must be true or false, got {spec[flag]!r}")
    log, integer = spec.get("log", False), spec.get("int", False)
    if integer and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"params.yaml: {where}: int: true needs whole-number bounds, got {low}..{high}")
    if not low < high or (log and low <= 0):
        raise ConfigError(f"params.yaml: {where}: needs low < high{' and low > 0 on a log scale' if log else ''}, got {low}..{high}")
    return Dimension(key, low=low, high=high, log=log, integer=integer)


def sweep_config(section: dict | None, variants: list[str]) -> SweepConfig:
    """The sweep's settings from params.yaml's `sweep:` section (and train.variants, which must list its variant)."""
    if section is not None and not isinstance(section, dict):
        raise ConfigError(f"params.yaml: sweep: must be a mapping of settings (variant:, trials:, space:, ...), got {section!r}")
    section = dict(section or {})
    defaults = {"variant": "cnn", "objective": "val_accuracy", "trials": 20, "workers": 1, "sampler": "tpe",
                "grid_points": 3, "pruner": "median",
                "startup_trials": 5, "warmup_epochs": 1, "seed": 0, "storage": None, "study": None, "space": {}}
    unknown = set(section) - set(defaults)
    if unknown:
        raise ConfigError(f"params.yaml: sweep.{sorted(unknown)[0]}: unknown setting; valid: {', '.join(defaults)}")
    values = defaults | section
    if values["variant"] not in variants:
        raise ConfigError(f"params.yaml: sweep.variant: {values['variant']!r} is not in train.variants ({', '.join(variants)})")
    if values["objective"] not in OBJECTIVES:
        raise ConfigError(f"params.yaml: sweep.objective: one of {', '.join(OBJECTIVES)}, got {values['objective']!r}")
    if values["sampler"] not in SAMPLERS:
        raise ConfigError(f"params.yaml: sweep.sampler: one of {', '.join(SAMPLERS)}, got {values['sampler']!r}")
    if values["pruner"] not in PRUNERS:
        raise ConfigError(f"params.yaml: sweep.pruner: one of {', '.join(PRUNERS)}, got {values['pruner']!r}")
    for key, least in (("trials", 1), ("workers", 1), ("grid_points", 2), ("startup_trials", 0), ("warmup_epochs", 0), ("seed", 0)):
        if not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < least:
            raise ConfigError(f"params.yaml: sweep.{key}: must be a whole number >= {least}, got {values[key]!r}")
    for key in ("storage", "study"):
        if values[key] is not None and not (isinstance(values[key], str) and values[key].strip()):
            raise ConfigError(f"params.yaml: sweep.{key}: must be text, got {values[key]!r}")
    if not isinstance(values["space"], dict) or not values["space"]:
        raise ConfigError("params.yaml: sweep.space: name at least one setting to search, e.g. train.lr: {low: 0.001, high: 0.1, log: true}")
    space = tuple(dimension(str(key), spec) for key, spec in values["space"].items())
    for searched in space:
        section, _, rest = searched.key.partition(".")
        if section == "models" and rest.partition(".")[0] != values["variant"]:
            raise ConfigError(f"params.yaml: sweep.space.{searched.key}: the sweep trains {values['variant']} (sweep.variant), "
                              f"whose settings are models.{values['variant']}.*: this would change nothing it trains")
        if values["pruner"] != "none" and searched.key.rpartition(".")[2] in SCHEDULE_LENGTH:
            raise ConfigError(f"params.yaml: sweep.space.{searched.key}: trials of other lengths anneal at other paces, and "
                              f"the pruner compares them epoch by epoch; search it with sweep.pruner: none")
    return SweepConfig(**(values | {"space": space}))


def applied(params: dict, values: dict[str, object]) -> dict:
    """params with each dotted key set to its value (a copy); a key params.yaml lacks is added, as `-S +key` does."""
    params = copy.deepcopy(params)
    for key, value in values.items():
        *sections, name = key.split(".")
        node = params
        for section in sections:
            if node.get(section) is None:  # `linear:` with nothing under it
                node[section] = {}
            node = node[section]
            if not isinstance(node, dict):
                raise ConfigError(f"params.yaml: sweep.space.{key}: {section} is not a section")
        node[name] = value
    return params


_ABSENT = object()


def dvc_command(params: dict, values: dict[str, object]) -> str:
    """The `dvc exp run` that reruns a drawn configuration as a whole pipeline experiment (every variant, test
    split and all); `+key` adds a key params.yaml does not have yet."""
    sets = [f"{'+' if P.get(params, key, _ABSENT) is _ABSENT else ''}{key}={json.dumps(value, separators=(',', ':'))}" for key, value in values.items()]
    return "dvc exp run " + " ".join(f"-S {shlex.quote(text)}" for text in sets)
