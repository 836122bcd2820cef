"""Typed, frozen, validated conversion configuration.

One ``ConversionConfig`` drives the whole conversion. It is validated once, in ``__post_init__``; every error names
the field and the valid values. Presets: :data:`RATE_DEFAULT` and :data:`DIFF_DEFAULT`. CLI precedence is
defaults < explicit flags (the CLI builds the config with :func:`ConversionConfig.for_coding`).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
import re
from dataclasses import dataclass, field

import numpy as np

from snnconvert.convert.errors import ConfigError
from snnconvert.convert.onnx_layout import INPUT_LAYOUTS

CODINGS = ("rate", "differential")
NEURON_KINDS = ("if", "mt")
GRANULARITIES = ("layer", "channel", "neuron")
IDENTITY_MODES = ("off", "auto", "all")
IDENTITY_TAILS = ("both", "upper")
TOKEN_CHANNELS = ("features", "tokens")
AGGREGATIONS = ("global", "batch-mean")
_PERCENT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_FRACTION_RE = re.compile(r"^\d*\.?\d+(?:[eE][-+]?\d+)?$")


def _exact(value: float) -> str:
    """The shortest decimal that reads back as ``value`` (no exponent: ``parse`` takes plain decimals)."""
    return np.format_float_positional(float(value), trim="-")


@dataclass(frozen=True)
class ThresholdSpec:
    """How thresholds are derived from calibration statistics.

    ``method`` is one of ``"max"``, ``"percentile"``, ``"iterate"`` (threshold iteration solved to convergence) or
    ``"iterate-reference"`` (the published 100-iteration variant). ``percentile`` is set for ``"percentile"``;
    ``fraction`` (in (0, 1]) for ``"max"`` scales the maximum (SpikingJelly's ``mode=0.5``: half the max).
    """

    method: str
    percentile: float | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if self.method not in ("max", "percentile", "iterate", "iterate-reference"):
            raise ConfigError(f"threshold method {self.method!r} is not valid; use max, percentile, iterate or "
                              "iterate-reference")
        if (self.percentile is not None) != (self.method == "percentile") or (
                self.percentile is not None and not 0.0 < self.percentile <= 100.0):
            raise ConfigError(f"threshold {self.method!r} with percentile={self.percentile!r}: a percentile in "
                              "(0, 100] goes with method 'percentile' only")
        if self.fraction is not None and (self.method != "max" or not 0.0 < self.fraction <= 1.0):
            raise ConfigError(f"threshold {self.method!r} with fraction={self.fraction!r}: a fraction in (0, 1] goes "
                              "with method 'max' only")

    @classmethod
    def parse(cls, text: str) -> ThresholdSpec:
        """Parse ``"max"``, ``"99.9%"``, a fraction of the max such as ``"0.5"``, ``"iterate"`` or
        ``"iterate-reference"`` (names in any case)."""
        text = str(text).strip()
        if text.lower() in ("max", "iterate", "iterate-reference"):
            return cls(text.lower())
        match = _PERCENT_RE.match(text)
        if match:
            p = float(match.group(1))
            if not 0.0 < p <= 100.0:
                raise ConfigError(f"threshold {text!r}: a percentile must be in (0, 100], e.g. 99.9%")
            return cls("percentile", p)
        if _FRACTION_RE.match(text):
            f = float(text)
            if not 0.0 < f <= 1.0:
                raise ConfigError(f"threshold {text!r}: a fraction of the max must be in (0, 1], e.g. 0.5; for a "
                                  "percentile write it with %, e.g. 99.9%")
            return cls("max", fraction=f)
        raise ConfigError(f"threshold {text!r} is not valid; use max, <p>% (e.g. 99.9%), a fraction of the max "
                          "(e.g. 0.5), iterate or iterate-reference")

    def __str__(self) -> str:
        """The rule as :meth:`parse` reads it back exactly (``"99.99999%"``, not 6 digits: ``"100%"``)."""
        if self.method == "percentile":
            return f"{_exact(self.percentile)}%"
        if self.fraction is not None:
            return _exact(self.fraction)
        return self.method

    @property
    def statistic(self) -> str:
        """Which statistic the method needs: ``"max"``, ``"percentile"`` or ``"moments"``."""
        return "moments" if self.method.startswith("iterate") else self.method


@dataclass(frozen=True)
class ConversionConfig:
    """Everything that selects how a model is converted.

    Attributes:
        coding: ``"rate"`` or ``"differential"``.
        timesteps: T, the number of simulation steps (>= 1). Threshold iteration fits thresholds for this T.
        threshold: a :class:`ThresholdSpec` or its text (``"99.9%"``, ``"max"``, ``"iterate"``, ...).
        granularity: ``"layer"`` (one threshold per ReLU site), ``"channel"`` (one per channel, dim 1) or
            ``"neuron"`` (one per element of a sample: tied to the input size it was calibrated at, method.md §7.3).
        neuron: ``"if"`` (single threshold, m0 = θ/2) or ``"mt"`` (multi-threshold with ``levels`` levels).
        levels: n, the number of thresholds of an MT neuron (1 for IF).
        fit_rtol, fit_max_iter: convergence settings of threshold iteration.
        allow_ann_ops: node-name glob patterns that may stay analog (explicit opt-in, recorded in the report).
        percentile_bins: histogram resolution used to locate exact percentiles (two extra calibration passes).
        identity_neurons: where signed, unconstrained "identity" neurons (method.md §4.7) quantise the input of a
            Conv/Linear layer: ``"auto"`` wherever that input is not already an event stream (the output of a graded
            unit, of a layer without activation, of a non-linear function of the input), ``"all"`` also in front of
            the layers that read the network input (the image is spike-encoded, the transformer preset), ``"off"``
            nowhere (such layers read dense values; the extended energy metric counts them as MACs).
        identity_threshold: the statistic of an identity neuron's threshold: a percentile or the max (threshold
            iteration models a ReLU and is not offered, method.md §7.1) ...
        identity_tail: ... of the input's magnitude ``|x|`` (``"both"``: negative values get the same range as
            positive ones) or of the signed input (``"upper"``, the reference's rule; a channel whose values are mostly
            negative gets a small or zero threshold).
        threshold_scale: c, the factor on identity-neuron thresholds (method.md §7.7; 1 for CNNs).
        identity_levels: n of the identity neurons when they are MT neurons (``None``: ``levels``). Their inputs are
            signed and heavy-tailed, so a percentile threshold leaves most values far below θ; more levels
            (θ/2^i down to θ/2^(n-1)) resolve them without more events per step (the reference's transformer
            configs use n = 6).
        token_channel: what "channel" means for per-channel thresholds on ``[B, N, C]`` token tensors read or
            produced by Linear layers: ``"features"`` (the last dim, one threshold per feature) or ``"tokens"``
            (dim 1, one per token position: the reference implementation's rule, method.md §7.8).
        threshold_aggregation: how max and percentile thresholds (ReLU and identity sites) pool the calibration
            data: ``"global"`` (the statistic of all values: independent of batching) or ``"batch-mean"`` (the
            statistic of each batch, averaged weighted by batch size: the reference implementation's rule, method.md
            §7.8; it depends on the calibration batch size). Threshold iteration pools moments exactly either way.
        input_layout: the layout of an ONNX model's input: ``"channels-first"`` (``[N, C, *spatial]``, PyTorch's)
            or ``"channels-last"`` (``[N, *spatial, C]``: TF / Keras models exported by tf2onnx). The converted
            network and its ANN always take channels-first data (what the data sets give); for a channels-last model
            the import puts a transpose in front of its input, which cancels the transpose tf2onnx writes there.
    """

    coding: str = "rate"
    timesteps: int = 32
    threshold: ThresholdSpec | str = "99.9%"
    granularity: str = "channel"
    neuron: str = "if"
    levels: int = 1
    fit_rtol: float = 1e-6
    fit_max_iter: int = 200
    allow_ann_ops: tuple[str, ...] = field(default_factory=tuple)
    percentile_bins: int = 4096
    identity_neurons: str = "auto"
    identity_threshold: ThresholdSpec | str = "99.9%"
    identity_tail: str = "both"
    threshold_scale: float = 1.0
    identity_levels: int | None = None
    token_channel: str = "features"
    threshold_aggregation: str = "global"
    input_layout: str = "channels-first"

    def __post_init__(self) -> None:
        for name in ("timesteps", "levels", "identity_levels", "fit_max_iter", "percentile_bins"):
            value = getattr(self, name)  # numpy integers (np.int64(8)) are integers too
            if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
                object.__setattr__(self, name, int(value))
        if not isinstance(self.threshold, ThresholdSpec):
            object.__setattr__(self, "threshold", ThresholdSpec.parse(self.threshold))
        if not isinstance(self.identity_threshold, ThresholdSpec):
            try:
                spec = ThresholdSpec.parse(self.identity_threshold)
            except ConfigError:
                raise ConfigError(f"identity_threshold {self.identity_threshold!r} is not valid; use <p>% (e.g. "
                                  "99.9%), max or a fraction of the max (e.g. 0.5)") from None
            object.__setattr__(self, "identity_threshold", spec)
        if self.identity_threshold.statistic == "moments":
            raise ConfigError(f"identity_threshold {self.identity_threshold} is not valid: threshold iteration models "
                              "a ReLU's output; identity neurons take a percentile (e.g. 99.9%) or max")
        _choice("identity_neurons", self.identity_neurons, IDENTITY_MODES)
        _choice("identity_tail", self.identity_tail, IDENTITY_TAILS)
        _choice("token_channel", self.token_channel, TOKEN_CHANNELS)
        _choice("threshold_aggregation", self.threshold_aggregation, AGGREGATIONS)
        _choice("input_layout", self.input_layout, INPUT_LAYOUTS)
        if isinstance(self.threshold_scale, bool) or not isinstance(self.threshold_scale, (int, float)) or \
                not math.isfinite(self.threshold_scale) or self.threshold_scale <= 0:
            raise ConfigError(f"threshold_scale must be a finite number > 0, got {self.threshold_scale!r}")
        object.__setattr__(self, "threshold_scale", float(self.threshold_scale))
        ops = (self.allow_ann_ops,) if isinstance(self.allow_ann_ops, str) else self.allow_ann_ops or ()  # one, None
        object.__setattr__(self, "allow_ann_ops", tuple(ops))
        _choice("coding", self.coding, CODINGS)
        _choice("neuron", self.neuron, NEURON_KINDS)
        _choice("granularity", self.granularity, GRANULARITIES)
        if not isinstance(self.timesteps, int) or isinstance(self.timesteps, bool) or self.timesteps < 1:
            raise ConfigError(f"timesteps must be a positive integer, got {self.timesteps!r}")
        _level_count("levels", self.levels)
        if self.neuron == "if" and self.levels != 1:
            raise ConfigError(f"neuron 'if' has a single threshold; got levels={self.levels}: use neuron='mt'")
        if self.identity_levels is not None:
            _level_count("identity_levels", self.identity_levels)
            if self.neuron == "if" and self.identity_levels != 1:
                raise ConfigError(f"identity_levels={self.identity_levels} needs multi-threshold neurons; neuron 'if' "
                                  "has a single threshold: use neuron='mt' (or leave identity_levels unset, None, with "
                                  "neuron 'if')")
        if not _number(self.fit_rtol) or not (0 < self.fit_rtol < 1) or not math.isfinite(self.fit_rtol):
            raise ConfigError(f"fit_rtol must be a number in (0, 1), got {self.fit_rtol!r}")
        if not _number(self.fit_max_iter, int) or self.fit_max_iter < 1:
            raise ConfigError(f"fit_max_iter must be an integer >= 1, got {self.fit_max_iter!r}")
        if not _number(self.percentile_bins, int) or self.percentile_bins < 16:
            raise ConfigError(f"percentile_bins must be an integer >= 16, got {self.percentile_bins!r}")

    @property
    def identity_n(self) -> int:
        """The number of thresholds of an identity neuron: ``identity_levels``, else ``levels``."""
        return self.levels if self.identity_levels is None else self.identity_levels

    @property
    def quantisation_levels(self) -> int:
        """N of threshold iteration: T for IF neurons, T * 2^n for MT neurons (method.md §7.6)."""
        return self.timesteps if self.neuron == "if" else self.timesteps * 2**self.levels

    def replace(self, **changes) -> ConversionConfig:
        """A copy with ``changes`` applied (validated again); an unknown field is a ConfigError naming the closest
        one."""
        _check_field_names(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready form (the threshold spec as text)."""
        d = dataclasses.asdict(self)
        d["threshold"] = str(self.threshold)
        d["identity_threshold"] = str(self.identity_threshold)
        d["allow_ann_ops"] = list(self.allow_ann_ops)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ConversionConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}; valid keys are {sorted(known)}")
        return cls(**d)

    @classmethod
    def for_coding(cls, coding: str, **overrides) -> ConversionConfig:
        """The preset of ``coding`` with explicit ``overrides`` (``None`` values are ignored)."""
        _choice("coding", coding, CODINGS)
        base = PRESETS[coding]
        changes = {k: v for k, v in overrides.items() if v is not None}
        if "levels" in changes and "neuron" not in changes and changes["levels"] > 1:
            changes["neuron"] = "mt"
        if changes.get("neuron") == "mt" and "levels" not in changes and base.levels == 1:
            changes["levels"] = DIFF_DEFAULT.levels  # multi-threshold neurons: n = 4 unless given (rate's preset: IF)
        if changes.get("neuron") == "if":  # single-threshold neurons: the preset's level counts do not apply
            changes.setdefault("levels", 1)
            changes.setdefault("identity_levels", None)
        return base.replace(**changes)


def _check_field_names(names) -> None:
    """An unknown configuration field (``timestep=8``) is a ConfigError naming the closest one."""
    known = [f.name for f in dataclasses.fields(ConversionConfig)]
    for key in names:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown configuration field {key!r}; {hint}fields: {', '.join(known)}")


def _checked_init(init):
    @functools.wraps(init)
    def __init__(self, *args, **fields) -> None:
        _check_field_names(fields)
        init(self, *args, **fields)
    return __init__


ConversionConfig.__init__ = _checked_init(ConversionConfig.__init__)  # ConversionConfig(timestep=8) too


def _number(value, kind: type | tuple[type, ...] = (int, float)) -> bool:
    """``value`` is a number of ``kind`` (a bool is not)."""
    return isinstance(value, kind) and not isinstance(value, bool)


def _level_count(name: str, value) -> None:
    """A number of MT thresholds n: an integer in [1, 16]."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 16:
        raise ConfigError(f"{name} must be an integer in [1, 16], got {value!r}")


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{name} {value!r} is not valid; choose one of: {', '.join(valid)}")


#: Rate coding: IF neurons with soft reset and per-channel 99.9 % thresholds.
RATE_DEFAULT = ConversionConfig(coding="rate", timesteps=32, threshold="99.9%", granularity="channel", neuron="if")
#: Differential coding: MT neurons with n = 4 and per-channel threshold iteration (method.md); identity neurons
#: (where a model has them) with n = 6: on fmnist-mnv3 at T = 4 that recovers 0.6 pp at 1.4x the energy, and n = 6 at
#: T = 4 beats n = 4 at T = 8 in both accuracy and energy (BENCHMARKS.md "Identity neurons").
DIFF_DEFAULT = ConversionConfig(
    coding="differential", timesteps=8, threshold="iterate", granularity="channel", neuron="mt", levels=4,
    identity_levels=6,
)
PRESETS = {"rate": RATE_DEFAULT, "differential": DIFF_DEFAULT}
