"""Calibration: observers inserted as graph nodes, statistics gathered by a caller-supplied ``forward_loop``, and
thresholds computed in a separate pure step.

Which tensor is observed (method.md §7.1, §11.10): ``max`` and percentiles come from the ReLU *output*; threshold
iteration uses the mean and variance of the ReLU *input* (after the max-pool reorder). An identity-neuron site
(method.md §4.7, §7.7) is observed on its input with ``cfg.identity_threshold`` (a percentile or the max) of
``|x|`` (``identity_tail="both"``) or of the signed input (``"upper"``, the reference's rule), and its threshold is
that statistic times ``cfg.threshold_scale``.
"""
from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from snnconvert.convert.calibrate.observers import (
    ActivationObserver,
    BatchMeanObserver,
    MaxObserver,
    MomentObserver,
    PercentileObserver,
    SelectPercentileObserver,
)
from snnconvert.convert.config import ConversionConfig, ThresholdSpec
from snnconvert.convert.errors import CalibrationError, ConfigError, check_float_images
from snnconvert.convert.passes.identity import is_identity_site, is_neuron_site, relu_channel_dim
from snnconvert.convert.passes.normalize import UPPER_CLIP_ATTR

log = logging.getLogger(__name__)

ForwardLoop = Callable[[torch.nn.Module], None]


@dataclass
class Site:
    """One neuron site: a canonical ReLU or an identity site (``name`` is its module target) and the observer
    watching it."""

    name: str
    observer_name: str
    observes: str  # "input" or "output"
    kind: str = "relu"  # "relu" or "identity"


@dataclass
class CalibrationReport:
    """Per-site threshold summaries and fit diagnostics."""

    method: str
    granularity: str
    quantisation_levels: int | None
    sites: list[dict[str, Any]] = field(default_factory=list)
    images: int | None = None

    def count(self, kind: str) -> int:
        """How many sites of ``kind`` (``"relu"`` or ``"identity"``)."""
        return sum(1 for site in self.sites if site.get("kind") == kind)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "granularity": self.granularity,
                "quantisation_levels": self.quantisation_levels, "images": self.images, "sites": self.sites}


def neuron_sites(gm: fx.GraphModule) -> list[fx.Node]:
    """The nodes that become neurons (canonical ReLUs and identity sites), in graph order."""
    memo: dict = {}
    return [n for n in gm.graph.nodes if is_neuron_site(gm, n, memo)]


def make_observer(cfg: ConversionConfig, spec: ThresholdSpec) -> ActivationObserver:
    """The observer that gathers ``spec``'s statistic at ``cfg``'s granularity and aggregation."""
    if cfg.threshold_aggregation == "batch-mean" and spec.statistic in ("max", "percentile"):
        return BatchMeanObserver(cfg.granularity, spec.percentile if spec.statistic == "percentile" else None)
    if spec.statistic == "max":
        return MaxObserver(cfg.granularity)
    if spec.statistic == "percentile" and cfg.granularity == "neuron":  # a histogram per element would not fit
        return SelectPercentileObserver(cfg.granularity, spec.percentile)
    if spec.statistic == "percentile":
        return PercentileObserver(cfg.granularity, spec.percentile, bins=cfg.percentile_bins)
    return MomentObserver(cfg.granularity)


def insert_observers(gm: fx.GraphModule, cfg: ConversionConfig) -> list[Site]:
    """Insert one observer per neuron site, named ``<site module>_observer``; returns the sites.

    Before: ``y = relu(x)``  After (max / percentile): ``y = relu(x); y_obs = relu_observer(y)`` with users of ``y``
    reading ``y_obs``; (threshold iteration): ``x_obs = relu_observer(x); y = relu(x_obs)``. An identity site is
    observed on its output (equal to its input) with ``cfg.identity_threshold``.
    """
    sites = []
    for relu in neuron_sites(gm):
        identity = is_identity_site(gm, relu)
        spec = cfg.identity_threshold if identity else cfg.threshold
        observes = "input" if spec.statistic == "moments" else "output"
        name = f"{relu.target.replace('.', '_')}_observer"
        observer = make_observer(cfg, spec)
        observer.magnitude = identity and cfg.identity_tail == "both"
        channel_dim = gm.get_submodule(relu.target).channel_dim if identity else relu_channel_dim(gm, relu)
        observer.channel_dim = 1 if cfg.token_channel == "tokens" else channel_dim
        gm.add_submodule(name, observer)
        if observes == "output":
            with gm.graph.inserting_after(relu):
                obs = gm.graph.call_module(name, (relu,))
            relu.replace_all_uses_with(obs, delete_user_cb=lambda user, o=obs: user is not o)
        else:
            with gm.graph.inserting_before(relu):
                obs = gm.graph.call_module(name, (relu.args[0],))
            relu.update_arg(0, obs)
        sites.append(Site(relu.target, name, observes, "identity" if identity else "relu"))
    gm.recompile()
    return sites


def remove_observers(gm: fx.GraphModule, sites: list[Site]) -> None:
    """Take the observer nodes out again; the graph is as before :func:`insert_observers`."""
    names = {s.observer_name for s in sites}
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target in names:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    for name in names:
        delattr(gm, name)
    gm.recompile()


#: keys of a dict batch that hold the input, tried in this order (users.md §3: the conventions of peer tools)
BATCH_INPUT_KEYS = ("input", "image", "images", "img", "x", "data", "pixel_values")


def batch_input(batch: Any) -> torch.Tensor:
    """The model input of one calibration batch: a tensor, the first item of an ``(input, target)`` tuple or list,
    or the value of the first of :data:`BATCH_INPUT_KEYS` in a dict.

    Raises:
        ConfigError: a batch of another kind, or a dict without any of those keys.
    """
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, Mapping):
        for key in BATCH_INPUT_KEYS:
            if key in batch:
                return batch[key]
        raise ConfigError(f"a calibration batch is a dict with keys {sorted(map(str, batch))}, none of which is an "
                          f"input key ({', '.join(BATCH_INPUT_KEYS)}); rename it or pass a forward_loop(model)")
    raise ConfigError(f"a calibration batch of type {type(batch).__name__} is not supported; give tensors, "
                      "(input, target) tuples or dicts with an 'input' / 'image' key, or a forward_loop(model)")


def _batched(data: Any) -> Any:
    """A map-style ``torch.utils.data.Dataset`` (``TensorDataset``, a torchvision data set: indexable, not
    iterable) as a DataLoader over it in order; other data as it is."""
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, Iterable):
        return torch.utils.data.DataLoader(data, batch_size=256, shuffle=False)
    return data


def first_input(data: ForwardLoop | Iterable | torch.Tensor | None) -> torch.Tensor | None:
    """The first sample of the first batch of re-iterable calibration data (a tensor, a list, a DataLoader), as a
    batch of one: the example input the model is traced and checked at when none is given. None for a
    ``forward_loop(model)`` or a one-shot iterator (peeking would use up a batch calibration needs), and for data
    whose first batch is not a tensor input (calibration then says what is wrong)."""
    if isinstance(data, torch.Tensor):
        return data[:1]
    data = _batched(data)
    if data is None or callable(data) or not isinstance(data, Iterable) or iter(data) is data:
        return None
    for batch in data:
        try:
            x = batch_input(batch)
        except ConfigError:
            return None
        return x[:1] if isinstance(x, torch.Tensor) and x.dim() > 0 else None
    return None


def as_forward_loop(data: ForwardLoop | Iterable) -> ForwardLoop:
    """Accept a ``forward_loop(model)`` callable, an iterable of batches (a DataLoader, a list: see
    :func:`batch_input`) or one tensor of calibration images (a single batch). The iterable is walked once per
    calibration pass, so it must be re-iterable (a list or a DataLoader, not a generator, for percentiles).

    Raises:
        ConfigError: no calibration data (None) or an object that is neither callable nor iterable.
        CalibrationError: (from the loop) a pass that gets no batches: empty data, or a generator used up.
    """
    if data is None:
        raise ConfigError("calibration needs data: pass a DataLoader or an iterable of TRAIN-split batches, or a "
                          "forward_loop(model) that feeds them (thresholds come from the activations they produce)")
    if isinstance(data, torch.Tensor):  # one batch of calibration images
        data = [data]
    if callable(data):
        _check_takes_the_model(data)
        return data
    data = _batched(data)
    if not isinstance(data, Iterable):
        raise ConfigError(f"calibration data of type {type(data).__name__} is neither a forward_loop(model) nor an "
                          "iterable of batches; pass a DataLoader or a list of tensors")

    passes = []

    def loop(model: torch.nn.Module) -> None:
        n = 0
        for batch in data:
            x = batch_input(batch)
            check_float_images(x, "calibration")
            model(x.float() if isinstance(x, torch.Tensor) else x)  # as the SNN reads it
            n += 1
        passes.append(n)
        if n == 0:
            raise CalibrationError("no calibration data: the data gave no batches" + (
                "" if len(passes) == 1 else f" in pass {len(passes)} (pass 1 had {passes[0]}): a generator is used "
                "up after one pass; pass a list or a DataLoader"))

    return loop


def _check_takes_the_model(loop: Callable) -> None:
    """A ``forward_loop`` is called with the model alone: one that needs more arguments is a ConfigError now, not
    a TypeError from inside calibration."""
    try:
        signature = inspect.signature(loop)
    except (TypeError, ValueError):  # no signature to read (some builtins): calling it will tell
        return
    try:
        signature.bind(object())
    except TypeError as exc:
        name = getattr(loop, "__qualname__", type(loop).__name__)
        raise ConfigError(f"forward_loop {name}{signature} is called as forward_loop(model) ({exc}); bind the other "
                          "arguments first, e.g. functools.partial(loop, loader=...) or lambda m: loop(m, loader)"
                          ) from None


def run_calibration(gm: fx.GraphModule, sites: list[Site], forward_loop: ForwardLoop) -> None:
    """Call ``forward_loop(gm)`` once per pass the observers need (two for percentiles, else one); each observer
    sees only the passes it needs."""
    observers = [gm.get_submodule(s.observer_name) for s in sites]
    passes = max([o.passes for o in observers] + [1])
    for done in range(1, passes + 1):
        with torch.no_grad():
            forward_loop(gm)
        _check_reached(sites, observers)
        for o in observers:
            if not o.done:
                o.next_phase()
            # an observer that needs fewer passes (max, moments next to a percentile) sees the data once
            o.done = o.passes <= done
    _check_reached(sites, observers)


def _check_reached(sites: list[Site], observers: list[ActivationObserver]) -> None:
    for s, o in zip(sites, observers):
        if o.count == 0:
            raise CalibrationError(f"no calibration data reached {s.name}; check the forward_loop / calibration data")


def _broadcast_shape(values: torch.Tensor, obs: ActivationObserver) -> torch.Tensor:
    """Shape a per-group vector so it broadcasts over one sample: ``[C, 1, 1]`` for NCHW, ``[C]`` for the last dim
    (``channel_dim = -1``), ``[]`` for a layer, the sample's shape for neurons."""
    granularity, ndim, channel_dim = obs.granularity, obs.ndim, obs.channel_dim
    if granularity == "layer":
        return values.reshape(())
    if granularity == "neuron":
        return values.reshape(obs.sample_shape)
    if channel_dim == -1:
        return values.reshape(-1)
    return values.reshape([values.shape[0]] + [1] * max(ndim - 2, 0))


def _summary(theta: torch.Tensor) -> dict[str, float]:
    t = theta.double().reshape(-1)
    return {"min": float(t.min()), "mean": float(t.mean()), "max": float(t.max()), "count": int(t.numel()),
            "zero": int((t <= 0).sum())}


def compute_thresholds(
    gm: fx.GraphModule, sites: list[Site], cfg: ConversionConfig, *, warn: bool = True
) -> tuple[dict[str, torch.Tensor], CalibrationReport]:
    """Turn observer statistics into thresholds (pure: reads observers, changes nothing). ``warn=False`` leaves out
    the log lines about silent groups (a sweep logs them for its first T only: they do not depend on T).

    Returns:
        ``{site name: threshold}`` (float32, clamped >= 0, shaped to broadcast over one sample) and the report.

    Raises:
        CalibrationError: non-finite statistics, or a fit that does not converge.
    """
    spec = cfg.threshold
    levels = cfg.quantisation_levels if spec.statistic == "moments" else None
    report = CalibrationReport(method=str(spec), granularity=cfg.granularity, quantisation_levels=levels)
    thresholds: dict[str, torch.Tensor] = {}
    unresolved: dict[ThresholdSpec, list[tuple[str, int]]] = {}  # percentile -> (site, values per group) too few
    for site in sites:
        obs = _site_observer(gm, site, cfg)
        theta, info = site_threshold(site, obs, cfg, model=gm)
        thresholds[site.name] = _broadcast_shape(theta, obs)
        report.sites.append(info)
        site_spec = cfg.identity_threshold if site.kind == "identity" else spec
        if site_spec.method == "percentile" and obs.count < _values_to_resolve(site_spec.percentile):
            unresolved.setdefault(site_spec, []).append((site.name, obs.count))
        if info["threshold"]["zero"] and warn:
            # the upper ReLU of a decomposed ReLU6/clamp is silent wherever the input never reached the ceiling
            expected = getattr(gm.get_submodule(site.name), UPPER_CLIP_ATTR, False)
            log.log(logging.INFO if expected else logging.WARNING, "site %s: %d of %d %s have threshold 0 (%s) and "
                    "stay silent%s", site.name, info["threshold"]["zero"], info["threshold"]["count"],
                    {"neuron": "neurons", "channel": "channels"}.get(cfg.granularity, "layer thresholds"), site_spec,
                    " (upper clip of a bounded ReLU)" if expected else
                    ": their inputs are (almost) never positive on the calibration data; if the test data's are, "
                    "calibrate on more images or use a higher percentile or max")
    if warn:
        _warn_unresolved(unresolved, cfg.granularity)
    return thresholds, report


def _site_observer(gm: fx.GraphModule, site: Site, cfg: ConversionConfig) -> ActivationObserver:
    """``site``'s observer, which must have gathered the statistic ``cfg`` asks for (the one
    :func:`insert_observers` puts there for ``cfg``): thresholds of another rule cannot come from it.

    Raises:
        ConfigError: no observer (removed, or not inserted in this graph), or one of another rule or granularity.
    """
    try:
        obs = gm.get_submodule(site.observer_name)
    except AttributeError:
        raise ConfigError(f"site {site.name} has no observer {site.observer_name} in this graph (removed by "
                          "remove_observers, or inserted into another graph): compute the thresholds before removing "
                          "the observers, on the graph insert_observers returned the sites of") from None
    identity = site.kind == "identity"
    want = make_observer(cfg, cfg.identity_threshold if identity else cfg.threshold)
    want.magnitude = identity and cfg.identity_tail == "both"
    got = (type(obs).__name__, obs.granularity, getattr(obs, "q", None), obs.magnitude)
    if got != (type(want).__name__, want.granularity, getattr(want, "q", None), want.magnitude):
        raise ConfigError(f"site {site.name}: its observer gathered {_observed(obs)}, but the configuration asks for "
                          f"{_observed(want)}: compute_thresholds takes the configuration insert_observers was given "
                          "(for another rule or granularity, insert the observers again and calibrate)")
    return obs


def _observed(obs: ActivationObserver) -> str:
    """What an observer gathers, in words: ``"the 99.9% percentile per channel (of |x|)"``."""
    q = getattr(obs, "q", None)
    what = {"MomentObserver": "mean and variance", "MaxObserver": "the max"}.get(
        type(obs).__name__, "the max" if q is None else f"the {100 * q:g}% percentile")
    if isinstance(obs, BatchMeanObserver):
        what += " of each batch, averaged"
    return f"{what} per {obs.granularity}" + (" (of |x|)" if obs.magnitude else "")


def _values_to_resolve(percentile: float) -> int:
    """How many values a percentile needs before it differs from their max: 1 / (1 - p), e.g. 1 000 for 99.9 %."""
    return math.ceil(1 / (1 - percentile / 100) - 1e-9) if percentile < 100 else 1


def _warn_unresolved(unresolved: dict[ThresholdSpec, list[tuple[str, int]]], granularity: str) -> None:
    """One warning per percentile whose per-group value counts are too few to tell it from the max."""
    group = {"neuron": "neuron", "channel": "channel"}.get(granularity, "layer")
    for percentile, found in unresolved.items():
        names = ", ".join(name for name, _ in found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        need = _values_to_resolve(percentile.percentile)
        log.warning("%s thresholds of %d site(s) (%s) come from fewer than %d values per %s (fewest: %d), too few "
                    "to tell that percentile from their maximum (outliers included); calibrate on more images or "
                    "choose a lower percentile", percentile, len(found), names, need, group,
                    min(count for _, count in found))


def site_threshold(site: Site, obs: ActivationObserver, cfg: ConversionConfig, *, model: torch.nn.Module,
                   what: str = "calibration") -> tuple[torch.Tensor, dict[str, Any]]:
    """One site's thresholds from its observer's statistics: a float32 vector, one per group, clamped >= 0, and the
    site's report entry. ``model`` holds the parameters named when the activations were not finite; ``what`` names
    the images in the errors.

    Raises:
        CalibrationError: non-finite statistics, or a fit that does not converge.
    """
    identity = site.kind == "identity"
    site_spec = cfg.identity_threshold if identity else cfg.threshold
    info: dict[str, Any] = {"site": site.name, "kind": site.kind, "observes": site.observes, "values": obs.count}
    if obs.nonfinite:
        raise CalibrationError(f"site {site.name}: {obs.nonfinite} non-finite activation value(s) on the {what} "
                               f"images; {_nonfinite_advice(model, what)}")
    if isinstance(obs, MomentObserver):
        theta, fit_info = _fit(obs, cfg, site.name)
        info.update(fit_info)
    else:  # max (times a fraction), percentile, or their per-batch means
        theta = obs.value * (1.0 if site_spec.fraction is None else site_spec.fraction)
    if identity:
        theta = theta * cfg.threshold_scale
        info.update(method=str(site_spec), tail=cfg.identity_tail, scale=cfg.threshold_scale)
    if not bool(torch.isfinite(theta).all()):
        raise CalibrationError(f"site {site.name}: non-finite threshold from {site_spec}; check the {what} data")
    theta = theta.clamp_min(0).float()
    info["threshold"] = _summary(theta)
    return theta, info


def _nonfinite_advice(gm: torch.nn.Module, what: str = "calibration") -> str:
    """What to check when calibration saw NaN or inf: the parameters that hold them, else the (``what``) images."""
    bad = [name for name, p in gm.named_parameters() if not bool(torch.isfinite(p).all())]
    bad += [name for name, b in gm.named_buffers() if b.is_floating_point() and not bool(torch.isfinite(b).all())]
    if bad:
        return f"the model holds NaN or inf in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}"
    return f"check the {what} images for NaN or inf values (or values that overflow float32 in the model)"


def _fit(obs: MomentObserver, cfg: ConversionConfig, name: str) -> tuple[torch.Tensor, dict[str, Any]]:
    from snnconvert.convert.calibrate.fit import fit_thresholds

    method = "reference" if cfg.threshold.method == "iterate-reference" else "solve"
    if obs.count < 2:  # per-neuron statistics of one image: no spread to fit to (dead neurons would get θ = 1)
        log.warning("site %s: threshold iteration from %d calibration value per %s: every variance is 0, so the "
                    "thresholds are guesses; calibrate on more images or with granularity 'channel'", name, obs.count,
                    {"neuron": "neuron", "channel": "channel"}.get(cfg.granularity, "layer"))
    result = fit_thresholds(obs.mean, obs.var, cfg.quantisation_levels, method=method, rtol=cfg.fit_rtol,
                            max_iter=cfg.fit_max_iter)
    converged = torch.as_tensor(result.converged)
    n_iter = torch.as_tensor(result.n_iter)
    info = {"fit_method": method, "n_iter_max": int(n_iter.max()), "converged": int(converged.sum()),
            "groups": int(converged.numel()), "n_dead": int(result.n_dead), "n_nonfinite": int(result.n_nonfinite),
            "residual_max": float(torch.as_tensor(result.residual).max())}
    if method == "solve" and not bool(converged.all()):
        first = int((~converged).reshape(-1).nonzero()[0])
        mu, var = float(obs.mean.reshape(-1)[first]), float(obs.var.reshape(-1)[first])
        raise CalibrationError(
            f"site {name}: threshold iteration did not converge for {int((~converged).sum())} group(s) in "
            f"{cfg.fit_max_iter} iterations (group {first}: mean {mu:.4g}, variance {var:.4g}); raise fit_max_iter, "
            "or use a percentile threshold")
    return result.threshold.double(), info
