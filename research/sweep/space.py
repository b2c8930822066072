"""What a study searches, and the one two-way encoder between Optuna trial
parameters and config overrides.

The study file's ``search:`` section (:class:`SearchSpace`)::

    search:
      temperature: {low: 1.0, high: 20.0, log: true}   # Optuna param "temperature" -> distill.temperature
      alpha: {low: 0.0, high: 1.0}                      # "alpha" -> distill.alpha
      teacher_weights: true                             # "w_0".."w_{K-1}" -> distill.teacher_weights
      params:                                           # any other dotted config key, named by that key
        train.lr: {low: 1.0e-4, high: 1.0e-1, log: true}
        student.args.widths: {choices: [[32], [64, 64]]}
        train.optimizer: {choices: [sgd, adam]}
        train.momentum: {low: 0.5, high: 0.99, when: {train.optimizer: sgd}}

Every searched thing becomes one :class:`Dimension`: the config key it sets,
the Optuna parameter name(s) that stand for it, how a trial draws it and how
its value crosses between the two worlds. :class:`SearchEncoder` holds the
study's dimensions and is the only place that translates:

* ``suggest(trial) -> overrides``: draw one point (define-by-run), the config
  values it stands for, keyed by dotted config key;
* ``decode(params) -> overrides``: a finished trial's stored parameters back to
  config values (``trial_config``, ``finalize``, kept models);
* ``encode(overrides) -> params``: config values to the parameters Optuna
  stores (enqueued points); ``encode(decode(p)) == p`` for every point a
  trial can store (weights scaled so that the largest is 1, see below), and
  ``decode(encode(v)) == v`` for every valid ``v``.

Encodings (the stored names and values are what MLflow logs as ``trial.<name>``
and what ``enqueue:`` entries and reports use, so they never change):

* a range: the value itself (``suggest_float`` / ``suggest_int``);
* a choice among scalars: the value itself; a choice with any non-scalar
  option (a list of layer widths): every option as its JSON text, because
  Optuna's categorical options must be scalars;
* teacher weights: K positive draws ``w_k`` in [1e-3, 1] normalised onto the
  simplex (``w / sum(w)``, ``research.distill.normalize_teacher_weights``);
  the normalised list is the config value and is also set as the trial's
  ``teacher_weights`` user attribute. Encoding scales a weight list so that
  its largest entry is 1 (normalisation forgets the scale, so that is the
  canonical representative); a ratio above 1000 between two weights cannot
  be drawn and is refused.

Conditional parameters (define-by-run): a range or choice with ``when:
{param: value}`` is drawn only when the named choice parameter took that value
(``when: {param: [v1, v2]}``: any of them; several entries: all must hold;
a parameter whose condition parameter was not drawn is not drawn either).
A trial that does not draw it stores no parameter for it and its config keeps
the file's value. Dimensions are drawn in the file's order, except that a
parameter comes after the parameters its condition names.

No Optuna import here: ``suggest`` takes the trial it is given (an
``optuna.Trial``); everything else is plain values, so ``research.config``
validates study files with this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Mapping

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from ..distill import normalize_teacher_weights

__all__ = ["Choice", "Dimension", "FloatRange", "IntRange", "Param", "SearchEncoder", "SearchSpace", "SimplexWeights", "SpaceError"]


class SpaceError(ValueError):
    """A value or point that the search space cannot hold. ``name``: the parameter or
    config key at fault (None: the point as a whole); ``reason``: what is wrong."""

    def __init__(self, name: str | None, reason: str):
        super().__init__(f"{name}: {reason}" if name else reason)
        self.name = name
        self.reason = reason


# ---------------------------------------------------------------- the study file's search section


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _Range(_Strict):
    """Common to the three kinds of distribution: an optional condition."""

    when: dict[str, Any] = Field(default_factory=dict)  # {param: value or [values]}: drawn only then

    @model_serializer(mode="wrap")
    def _without_empty_when(self, handler):
        # Unconditional spaces dump as they did before conditions existed, so a study's
        # config hash (the check that a joined study is the same one) is unchanged.
        out = handler(self)
        if not self.when:
            out.pop("when", None)
        return out

    def suggest(self, trial: Any, name: str) -> Any:
        """Draw a value on an ``optuna.Trial``; returns the config value."""
        raise NotImplementedError

    def coerce(self, value: Any) -> Any:
        """``value`` as the config value this distribution can produce (a number as the
        range's type, a choice as the option itself); ValueError saying why when it cannot."""
        raise NotImplementedError

    def to_param(self, value: Any) -> Any:
        """The stored Optuna parameter of a valid config value."""
        return self.coerce(value)

    def from_param(self, raw: Any) -> Any:
        """The config value of a stored Optuna parameter."""
        return raw


class FloatRange(_Range):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "FloatRange":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def coerce(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{value!r} is not a number")
        if not self.low <= value <= self.high:
            raise ValueError(f"{value} is outside [{self.low}, {self.high}]")
        return float(value)


class IntRange(_Range):
    int_low: int
    int_high: int
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "IntRange":
        if not self.int_low < self.int_high:
            raise ValueError(f"int_low ({self.int_low}) must be below int_high ({self.int_high})")
        return self

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.int_low, self.int_high, log=self.log)

    def coerce(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise ValueError(f"{value!r} is not an integer")
        if not self.int_low <= value <= self.int_high:
            raise ValueError(f"{value} is outside [{self.int_low}, {self.int_high}]")
        return int(value)


class Choice(_Range):
    choices: list[Any] = Field(min_length=1)

    @property
    def as_json(self) -> bool:
        """Whether the options travel as JSON text (any option is not a scalar)."""
        return not all(c is None or isinstance(c, (bool, int, float, str)) for c in self.choices)

    def suggest(self, trial: Any, name: str) -> Any:
        if not self.as_json:
            return trial.suggest_categorical(name, self.choices)
        return json.loads(trial.suggest_categorical(name, [json.dumps(c) for c in self.choices]))

    def coerce(self, value: Any) -> Any:
        for c in self.choices:  # the option itself, so that its JSON text is the one the trial draws from
            if c == value and isinstance(c, bool) == isinstance(value, bool):
                return c
        raise ValueError(f"{value!r} is not one of the choices {self.choices}")

    def to_param(self, value: Any) -> Any:
        c = self.coerce(value)
        return json.dumps(c) if self.as_json else c

    def from_param(self, raw: Any) -> Any:
        return json.loads(raw) if self.as_json else raw


class SearchSpace(_Strict):
    """What the study searches; anything not searched keeps the run config's value.

    ``temperature`` and ``alpha`` are shorthands (kept for the study files): the
    Optuna parameters ``temperature`` and ``alpha`` setting ``distill.temperature``
    and ``distill.alpha``; ``params`` names any other dotted key, whose parameter is
    named by that key."""

    SHORTHANDS: ClassVar[dict[str, str]] = {"temperature": "distill.temperature", "alpha": "distill.alpha"}

    temperature: FloatRange | None = Field(default_factory=lambda: FloatRange(low=1.0, high=20.0, log=True))
    alpha: FloatRange | None = Field(default_factory=lambda: FloatRange(low=0.0, high=1.0))
    teacher_weights: bool = False  # draw K positive values, normalise onto the simplex
    params: dict[str, FloatRange | IntRange | Choice] = Field(default_factory=dict)  # other dotted keys, e.g. train.lr
    # How each trial is measured (research.sweep.objective): ``repeats`` R trains the student R
    # times with seeds derived from the study's (same split); ``folds`` K >= 2 runs K-fold
    # cross-validation over train + val. The trial's value is the mean. 1 and 0: one run, as before.
    repeats: int = Field(1, ge=1)
    folds: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _repeats_or_folds(self) -> "SearchSpace":
        if self.folds == 1:
            raise ValueError("folds must be 0 (no cross-validation) or at least 2, got 1")
        if self.repeats > 1 and self.folds > 1:
            raise ValueError(f"repeats ({self.repeats}) and folds ({self.folds}) exclude each other: "
                             "repeat over seeds or cross-validate over folds, not both")
        return self

    @model_serializer(mode="wrap")
    def _without_default_measuring(self, handler):
        # A study without repeats or folds dumps as before they existed, so its config hash
        # (the check that a joined study is the same one) is unchanged.
        out = handler(self)
        if self.repeats == 1:
            out.pop("repeats", None)
        if self.folds == 0:
            out.pop("folds", None)
        return out

    @property
    def measurements(self) -> int:
        """How many training runs measure one trial: R repeats, K folds, or 1."""
        return self.folds if self.folds > 1 else self.repeats


# ---------------------------------------------------------------- dimensions


@dataclass(frozen=True, kw_only=True)
class Dimension:
    """One searched config key and the Optuna parameter(s) standing for it.

    key: dotted config key it sets. where: its place in the study file (for messages).
    when: the resolved condition, param name -> accepted config values (all must hold).
    """

    key: str
    where: str
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def label(self) -> str:
        """The name a summary shows the value under."""
        raise NotImplementedError

    def suggest(self, trial: Any) -> Any:
        raise NotImplementedError

    def encode(self, value: Any) -> dict[str, Any]:
        """The stored parameters of config value ``value``; SpaceError when invalid."""
        raise NotImplementedError

    def decode(self, params: Mapping[str, Any]) -> Any:
        """The config value of this dimension's stored parameters (all present)."""
        raise NotImplementedError

    def coerce_param(self, name: str, value: Any) -> Any:
        """An enqueued entry given by parameter name, as its config-side value."""
        raise NotImplementedError

    def user_attrs(self, value: Any) -> dict[str, Any]:
        """User attributes a trial that drew ``value`` carries."""
        return {}


@dataclass(frozen=True, kw_only=True)
class Param(Dimension):
    """One Optuna parameter ``name`` drawn from ``space``, one config key."""

    name: str
    space: FloatRange | IntRange | Choice

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,)

    @property
    def label(self) -> str:
        return self.name

    def suggest(self, trial: Any) -> Any:
        return self.space.suggest(trial, self.name)

    def encode(self, value: Any) -> dict[str, Any]:
        try:
            return {self.name: self.space.to_param(value)}
        except ValueError as e:
            raise SpaceError(self.name, str(e)) from None

    def decode(self, params: Mapping[str, Any]) -> Any:
        return self.space.from_param(params[self.name])

    def coerce_param(self, name: str, value: Any) -> Any:
        try:
            return self.space.coerce(value)
        except ValueError as e:
            raise SpaceError(name, str(e)) from None


@dataclass(frozen=True, kw_only=True)
class SimplexWeights(Dimension):
    """K teachers' weights: parameters ``w_0..w_{K-1}`` drawn in [LOW, HIGH] and
    normalised to sum 1 (the config value, a list of K floats)."""

    LOW: ClassVar[float] = 1e-3
    HIGH: ClassVar[float] = 1.0
    USER_ATTR: ClassVar[str] = "teacher_weights"

    k: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"w_{i}" for i in range(self.k))

    @property
    def label(self) -> str:
        return self.USER_ATTR

    def suggest(self, trial: Any) -> list[float]:
        return self._normalized([trial.suggest_float(n, self.LOW, self.HIGH) for n in self.names])

    def _normalized(self, raw: list[float]) -> list[float]:
        return [float(w) for w in normalize_teacher_weights(raw, self.k)]

    def encode(self, value: Any) -> dict[str, float]:
        if not isinstance(value, (list, tuple)) or len(value) != self.k:
            raise SpaceError(self.key, f"expected a list of {self.k} weights, got {value!r}")
        top = max(value)
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in value) or top <= 0:
            raise SpaceError(self.key, f"weights must be non-negative numbers, not all zero, got {value!r}")
        raw = [w / top for w in value]  # the largest weight 1: the canonical point of its ray
        if min(raw) < self.LOW:
            raise SpaceError(self.key, f"{value!r}: a weight below {self.LOW:g} x the largest cannot be drawn")
        return dict(zip(self.names, raw))

    def decode(self, params: Mapping[str, Any]) -> list[float]:
        return self._normalized([params[n] for n in self.names])

    def coerce_param(self, name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.LOW <= value <= self.HIGH:
            raise SpaceError(name, f"{value!r} is outside [{self.LOW}, {self.HIGH}]")
        return float(value)

    def user_attrs(self, value: Any) -> dict[str, Any]:
        return {self.USER_ATTR: value}


# ---------------------------------------------------------------- the encoder


class SearchEncoder:
    """The study's dimensions, in drawing order; see the module docstring.

    Build it with :meth:`of` from a :class:`SearchSpace` (or from dimensions
    directly). Raises SpaceError when the dimensions clash (two with one name or
    key) or a condition is invalid (unknown or non-choice parameter, a value that
    is not one of its choices, a cycle).
    """

    def __init__(self, dims: list[Dimension], raw_when: Mapping[str, Mapping[str, Any]] | None = None):
        names: dict[str, Dimension] = {}
        keys: dict[str, Dimension] = {}
        for d in dims:
            for n in d.names:
                if n in names:
                    raise SpaceError(d.where, f"parameter name {n!r} is used twice")
                names[n] = d
            if d.key in keys:
                raise SpaceError(d.where, f"{d.key} is searched twice (also by {keys[d.key].where})")
            keys[d.key] = d
        self._by_name, self._by_key = names, keys
        if raw_when:
            dims = [self._resolve(d, raw_when.get(d.where) or {}) for d in dims]
        self.dims: list[Dimension] = self._ordered(dims)
        self._by_name = {n: d for d in self.dims for n in d.names}
        self._by_key = {d.key: d for d in self.dims}

    @classmethod
    def of(cls, search: SearchSpace, n_teachers: int) -> "SearchEncoder":
        """The dimensions of a study file's ``search:`` section: the shorthands, the
        teachers' weights, then ``params`` in file order."""
        dims: list[Dimension] = []
        when: dict[str, dict[str, Any]] = {}
        for short, key in SearchSpace.SHORTHANDS.items():
            space = getattr(search, short)
            if space is not None:
                dims.append(Param(key=key, where=f"search.{short}", name=short, space=space))
                when[f"search.{short}"] = space.when
        if search.teacher_weights:
            dims.append(SimplexWeights(key="distill.teacher_weights", where="search.teacher_weights", k=n_teachers))
        for key, space in search.params.items():
            dims.append(Param(key=key, where=f"search.params.{key}", name=key, space=space))
            when[f"search.params.{key}"] = space.when
        return cls(dims, when)

    # -------------------------------------------------- construction helpers

    def _resolve(self, dim: Dimension, raw: Mapping[str, Any]) -> Dimension:
        """``when: {param: value or [values]}`` -> {param name: accepted values}, checked."""
        resolved: dict[str, tuple[Any, ...]] = {}
        for ref, wanted in raw.items():
            target = self._by_name.get(ref) or self._by_key.get(ref)
            if target is None:
                raise SpaceError(f"{dim.where}.when", f"{ref} is not searched; searched: {', '.join(self._by_name)}")
            if target is dim:
                raise SpaceError(f"{dim.where}.when", "a parameter cannot depend on itself")
            if not (isinstance(target, Param) and isinstance(target.space, Choice)):
                raise SpaceError(f"{dim.where}.when", f"{ref} is not a choice; a condition names a choice parameter")
            choices = target.space.choices
            if any(c == wanted for c in choices):
                accepted = (target.space.coerce(wanted),)
            elif isinstance(wanted, list) and wanted and all(any(c == w for c in choices) for w in wanted):
                accepted = tuple(target.space.coerce(w) for w in wanted)
            else:
                raise SpaceError(f"{dim.where}.when.{ref}", f"{wanted!r} is not one of its choices {choices} (nor a list of them)")
            resolved[target.name] = accepted
        return replace(dim, when=resolved)

    @staticmethod
    def _ordered(dims: list[Dimension]) -> list[Dimension]:
        """Stable topological order: file order, except that a dimension waits for the
        parameters its condition names (an unconditional space keeps its order exactly,
        so seeded samplers draw as before)."""
        owner = {n: d for d in dims for n in d.names}
        out: list[Dimension] = []
        placed: set[str] = set()
        pending = list(dims)
        while pending:
            for d in pending:
                if all(owner[ref].where in placed for ref in d.when):
                    out.append(d)
                    placed.add(d.where)
                    pending.remove(d)
                    break
            else:
                raise SpaceError(pending[0].where + ".when", "conditions form a cycle: " + ", ".join(d.where for d in pending))
        return out

    # -------------------------------------------------- queries

    @property
    def names(self) -> list[str]:
        """Every Optuna parameter name a trial may store, in drawing order."""
        return [n for d in self.dims for n in d.names]

    @property
    def conditional(self) -> bool:
        """Whether some parameter is drawn only under a condition (a dynamic search space)."""
        return any(d.when for d in self.dims)

    def dimension(self, name_or_key: str) -> Dimension | None:
        return self._by_name.get(name_or_key) or self._by_key.get(name_or_key)

    @staticmethod
    def _state(dim: Dimension, drawn: Mapping[str, Any]) -> bool | None:
        """Whether ``dim`` is drawn given the values ``drawn`` so far (by parameter name):
        True, False, or None when a condition parameter's value is unknown."""
        state: bool | None = True
        for ref, accepted in dim.when.items():
            if ref not in drawn:
                state = None
            elif drawn[ref] not in accepted:
                return False
        return state

    @staticmethod
    def _describe(dim: Dimension) -> str:
        return " and ".join(f"{ref} is {' or '.join(map(repr, acc))}" for ref, acc in dim.when.items())

    # -------------------------------------------------- the three translations

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Draw one point on ``trial`` (an ``optuna.Trial``); returns {config key: value}
        and sets the user attributes the dimensions carry (the teachers' weights)."""
        drawn: dict[str, Any] = {}
        out: dict[str, Any] = {}
        for dim in self.dims:
            if not self._state(dim, drawn):  # a condition parameter not drawn: not drawn either
                continue
            value = dim.suggest(trial)
            out[dim.key] = value
            if isinstance(dim, Param):
                drawn[dim.name] = value
            for k, v in dim.user_attrs(value).items():
                trial.set_user_attr(k, v)
        return out

    def decode(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's stored parameters -> {config key: value}, for the dimensions it drew.
        Raises SpaceError on a parameter this space does not have, or one it lacks."""
        unknown = [n for n in params if n not in self._by_name]
        if unknown:
            raise SpaceError(None, f"parameters {', '.join(unknown)} are not in this search space; its parameters: {', '.join(self.names)}")
        drawn: dict[str, Any] = {}
        out: dict[str, Any] = {}
        for dim in self.dims:
            if not self._state(dim, drawn):
                continue
            missing = [n for n in dim.names if n not in params]
            if missing:
                raise SpaceError(None, f"the point lacks {', '.join(missing)}")
            value = dim.decode(params)
            out[dim.key] = value
            if isinstance(dim, Param):
                drawn[dim.name] = value
        return out

    def encode(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """{config key: value} -> the stored parameters that stand for them (a partial
        point gives a partial set, e.g. for ``enqueue_trial``). Raises SpaceError on a key
        that is not searched, an invalid value, or a value whose condition the same point
        rules out."""
        unknown = [k for k in values if k not in self._by_key]
        if unknown:
            raise SpaceError(None, f"{', '.join(unknown)} not searched; searched: {', '.join(self._by_key)}")
        drawn: dict[str, Any] = {}
        params: dict[str, Any] = {}
        for dim in self.dims:
            if dim.key not in values:
                continue
            if self._state(dim, drawn) is False:
                raise SpaceError(dim.key, f"only searched when {self._describe(dim)}")
            encoded = dim.encode(values[dim.key])
            params.update(encoded)
            if isinstance(dim, Param):
                drawn[dim.name] = dim.decode(encoded)
        return params

    def display(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's stored parameters as {label: config value} for summaries: one entry
        per dimension drawn (the weights as one normalised list)."""
        values = self.decode(params)
        return {self._by_key[k].label: v for k, v in values.items()}

    # -------------------------------------------------- enqueued points

    def check_point(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """An ``enqueue:`` entry, validated and normalised (same keys; numbers as their
        range's type). Keys are parameter names (``temperature``, ``train.lr``, ``w_1``)
        or config keys (``distill.temperature``, ``distill.teacher_weights``); values are
        config values (a list for a list choice), raw draws for ``w_k``. SpaceError names
        the entry at fault."""
        self.enqueue_params(point)  # every check, conditions included
        out: dict[str, Any] = {}
        for k, v in point.items():
            dim = self.dimension(k)
            out[k] = dim.coerce_param(k, v) if isinstance(dim, Param) or k in dim.names else [float(w) for w in v]
        return out

    def enqueue_params(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """The Optuna parameters of an ``enqueue:`` entry (see check_point); the
        teachers' weights not given are 1 (uniform when none is)."""
        unknown = [k for k in point if self.dimension(k) is None]
        if unknown:
            raise SpaceError(None, f"{', '.join(unknown)} not searched; searched: {', '.join(self.names)}")
        values: dict[str, Any] = {}
        raw: dict[str, Any] = {}
        for k, v in point.items():
            dim = self.dimension(k)
            if isinstance(dim, Param):
                values[dim.key] = v  # by name or by key: a config value either way
            elif k in dim.names:
                raw[k] = dim.coerce_param(k, v)  # one raw draw w_k
            else:
                values[dim.key] = v
        try:
            params = self.encode(values)
        except SpaceError as e:  # name the entry as the point wrote it
            dim = self.dimension(e.name) if e.name else None
            written = next((k for k in point if dim is not None and self.dimension(k) is dim), e.name)
            raise SpaceError(written, e.reason) from None
        overlap = set(raw) & set(params)
        if overlap:
            raise SpaceError(None, f"give the teachers' weights once, as {', '.join(sorted(overlap))} or as distill.teacher_weights")
        params.update(raw)
        for dim in self.dims:
            if isinstance(dim, SimplexWeights):
                for n in dim.names:
                    params.setdefault(n, 1.0)
        return params
