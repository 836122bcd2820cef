"""Calibration check: do the thresholds fit the images the SNN is evaluated on?

Thresholds are fitted to the activations of the calibration images (the TRAIN split). When the evaluation images
look different to the network (another source, other preprocessing, a distribution shift), the thresholds are off
in scale (users.md §2.8: "a train/test shift gives wrong scales") and the SNN falls further behind its ANN than
it does on images like the calibration images (fmnist-vgg, differential coding, T = 8: 0.47 pp behind at 1.5x
contrast, 0.02 pp after calibrating on images with that contrast; BENCHMARKS.md "Calibration check").
The check refits every neuron site's thresholds on the evaluation images with the same rule,
granularity and levels, and compares them with the installed ones (or, when there are fewer evaluation images
than calibration images, with thresholds refitted on as many calibration images: a maximum over fewer images is
smaller):

    ratio[site] = median over the site's groups of θ_eval / θ_reference     (groups with θ_reference > 0)

On images from the calibration distribution the ratios are 1 up to sampling noise (fmnist-vgg, 5 000 test against
5 000 train images: within 1 % for threshold iteration and 99.9 %, 2 % for max; on N images up to about
0.83 / sqrt(N); BENCHMARKS.md). A site whose ratio leaves ``[1 / (1 + a), 1 + a]`` is flagged, with ``a`` the
larger of the tolerance (10 %) and ``noise / sqrt(N)`` (c = 1: fewer than 100 images widen it). Groups silent at
calibration (θ = 0) that the evaluation images activate are counted: those neurons never fire in the SNN.

The activations are those of :meth:`SpikingNetwork.ann_forward` (the converted graph run as its ANN: the network
calibration observed), read by the calibration's own observers at the neurons, so refitting on the calibration
images gives back the installed thresholds (tested).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from snnconvert.convert.calibrate import (
    ForwardLoop,
    Site,
    as_forward_loop,
    make_observer,
    run_calibration,
    site_threshold,
)
from snnconvert.convert.calibrate.observers import ActivationObserver
from snnconvert.convert.config import ConversionConfig
from snnconvert.convert.errors import ConfigError
from snnconvert.convert.passes.normalize import UPPER_CLIP_ATTR

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_TOLERANCE", "ThresholdCheck", "check_thresholds"]

#: relative change of a site's median threshold beyond which the check flags it
DEFAULT_TOLERANCE = 0.1
#: sampling noise of a site's median ratio between two sets of N images of one distribution, as c in c / sqrt(N):
#: the tolerance widens to c / sqrt(N) when that is larger (below 100 images at 10 %). The three Fashion-MNIST zoo
#: CNNs, eight disjoint blocks of N = 8 … 64 test images against as many training images: largest deviation up to
#: 0.83 / sqrt(N) (BENCHMARKS.md "Calibration check")
DEFAULT_NOISE = 1.0


@dataclass
class ThresholdCheck:
    """Thresholds refitted on other images against the installed ones (or against thresholds refitted on as many
    calibration images), per neuron site.

    Attributes:
        tolerance: the relative change asked for (:attr:`applied_tolerance`: the one flagged with).
        noise: the sampling-noise constant c of the widening to ``c / sqrt(N)``.
        rule: the threshold rule of the ReLU sites (identity sites are refitted with their own rule).
        granularity: layer / channel / neuron.
        images: the images refitted on.
        reference_images: the calibration images refitted on for the comparison; None: compared with the
            installed thresholds.
        sites: one entry per neuron site, in graph order: ``site``, ``kind`` (relu / identity), ``groups``,
            ``compared`` (groups with a reference threshold > 0), ``ratio`` (median of θ_refit / θ_reference over
            those; None when none), ``ratio_min`` / ``ratio_max``, ``newly_active`` (θ_reference = 0, θ_refit > 0:
            neurons silent in the SNN that these images would drive), ``upper_clip`` (the ceiling neuron of a
            bounded ReLU: ``relu(x - 6)`` of a ReLU6; reported, never flagged: its threshold is a statistic of the
            rare inputs above the ceiling, which varies from sample to sample even without a shift), ``flagged``.
    """

    tolerance: float
    rule: str
    granularity: str
    images: int
    reference_images: int | None = None
    sites: list[dict[str, Any]] = field(default_factory=list)
    noise: float = DEFAULT_NOISE

    @property
    def noise_images(self) -> int:
        """N of the sampling noise: the images refitted on, or the reference's when fewer."""
        return min(self.images, self.reference_images or self.images)

    @property
    def applied_tolerance(self) -> float:
        """The relative change beyond which a site is flagged: the larger of ``tolerance`` and
        ``noise / sqrt(noise_images)``."""
        n = self.noise_images
        return max(self.tolerance, self.noise / math.sqrt(n)) if n > 0 else self.tolerance

    @property
    def flagged(self) -> list[dict[str, Any]]:
        return [s for s in self.sites if s["flagged"]]

    @property
    def largest(self) -> dict[str, Any] | None:
        """The site whose median ratio is farthest from 1 (in log scale), upper-clip sites left out, or None when
        no such site has a ratio."""
        rated = [s for s in self.sites if s["ratio"] is not None and not s["upper_clip"]]
        return max(rated, key=lambda s: abs(math.log(s["ratio"])) if s["ratio"] > 0 else math.inf, default=None)

    @property
    def newly_active(self) -> int:
        """Groups silent on the reference images that these would drive (upper-clip sites left out)."""
        return sum(s["newly_active"] for s in self.sites if not s["upper_clip"])

    def summary(self, images: str = "images") -> str:
        """One line: the thresholds agree, or which sites moved and what to do (``images`` names the images
        refitted on, e.g. "evaluation images")."""
        on = f"{self.images} {images}"
        against = ("the calibrated ones" if self.reference_images is None
                   else f"those of {self.reference_images} calibration images")
        big = self.largest
        if big is None:
            return f"calibration check: no site has a positive threshold to compare on {on}"
        largest = f"largest change {big['site']} x{big['ratio']:.2f}"
        silent = self.newly_active
        woken = (f"; {silent} neuron group(s) silent on the calibration images (threshold 0) would be active on "
                 "these" if silent else "")
        tolerance = f"{100 * self.applied_tolerance:.3g} %"
        if self.applied_tolerance > self.tolerance:
            tolerance += f" (the sampling noise of {self.noise_images} images)"
        if not self.flagged:
            return (f"calibration check: thresholds refitted on {on} ({self.rule} per {self.granularity}) agree with "
                    f"{against} within {tolerance} at every site ({largest}){woken}")
        return (f"warning: thresholds refitted on {on} differ from {against} by more than {tolerance} at "
                f"{len(self.flagged)} of {len(self.sites)} sites ({largest}){woken}: the calibration images do not "
                "represent these images; calibrate on images from the same source and preprocessing")

    def to_dict(self) -> dict[str, Any]:
        return {"tolerance": self.tolerance, "applied_tolerance": self.applied_tolerance, "noise": self.noise,
                "rule": self.rule, "granularity": self.granularity,
                "images": self.images, "reference_images": self.reference_images, "flagged": len(self.flagged),
                "newly_active": self.newly_active, "sites": self.sites}


def _channel_dim(theta: torch.Tensor, ndim: int) -> int:
    """The channel dim calibration grouped by, read back from the threshold's shape (``_broadcast_shape``):
    ``[C, 1, ...]`` over ``[B, C, ...]`` is dim 1, ``[C]`` over a token tensor ``[B, N, C]`` the last."""
    return -1 if theta.dim() == 1 and ndim > 2 else 1


class _Analog(nn.Module):
    """The SNN's converted graph run as its ANN, holding the check's observers (``run_calibration`` reads them by
    name and calls the module through the calibration loop); counts the images of the first pass."""

    def __init__(self, snn) -> None:
        super().__init__()
        self.snn = snn
        self.images = 0
        self.first_pass = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0] if self.first_pass else 0
        return self.snn.ann_forward(x)


def _is_identity(neuron: nn.Module) -> bool:
    return neuron.signed and not neuron.relu_constrained  # its analog function is the identity


def _check_config_fits(snn, config: ConversionConfig, neurons: dict) -> None:
    """``config`` is the network's own (its coding; for threshold iteration, which fits to T and n, also its T and
    levels): refitting with another would flag every site as a shift of the images.

    Raises:
        ConfigError: naming what differs.
    """
    coding = getattr(snn.coding, "name", config.coding)
    differs = [f"coding {config.coding!r}, the network's {coding!r}"] if coding != config.coding else []
    if config.threshold.statistic == "moments":
        if snn.timesteps != config.timesteps:
            differs.append(f"T = {config.timesteps}, the network's {snn.timesteps}")
        levels = {n.n_levels for n in neurons.values() if not _is_identity(n) and hasattr(n, "n_levels")}
        if levels and levels != {config.levels}:
            differs.append(f"levels {config.levels}, the network's {sorted(levels)[0]}")
    if differs:
        raise ConfigError(f"the calibration check's configuration is not the network's ({'; '.join(differs)}): "
                          "give the configuration it was converted with (ConversionResult.config)")


def _refit(snn, config: ConversionConfig, data, what: str) -> tuple[dict[str, torch.Tensor], int]:
    """Every neuron site's thresholds fitted on ``data`` as calibration would (one float32 vector per site, in
    graph order), and the number of images."""
    loop = as_forward_loop(data)
    analog = _Analog(snn)
    sites: list[Site] = []
    handles = []
    try:
        for i, (name, neuron) in enumerate(snn.neurons()):
            identity = _is_identity(neuron)
            spec = config.identity_threshold if identity else config.threshold
            observer = make_observer(config, spec)
            observer.magnitude = identity and config.identity_tail == "both"
            site = Site(name, f"observer_{i}", "input" if spec.statistic == "moments" else "output",
                        "identity" if identity else "relu")
            analog.add_module(site.observer_name, observer)
            handles.append(_hook(neuron, observer, site.observes))
            sites.append(site)

        def counted(model: nn.Module) -> None:
            loop(model)
            analog.first_pass = False

        run_calibration(analog, sites, counted)
    finally:
        for handle in handles:
            handle.remove()
    fitted = {site.name: site_threshold(site, analog.get_submodule(site.observer_name), config, model=snn,
                                        what=what)[0] for site in sites}
    return fitted, analog.images


def check_thresholds(
    snn, config: ConversionConfig, data: ForwardLoop | Iterable | torch.Tensor, *,
    reference: ForwardLoop | Iterable | torch.Tensor | None = None, tolerance: float = DEFAULT_TOLERANCE,
    noise: float = DEFAULT_NOISE,
) -> ThresholdCheck:
    """Refit every neuron site's thresholds on ``data`` with ``config``'s rule and compare them with ``snn``'s, or
    with those refitted on ``reference``.

    Args:
        snn: a converted :class:`~snnconvert.convert.snn.SpikingNetwork` (not compiled: its neurons carry the
            thresholds).
        config: the configuration it was converted with (``ConversionResult.config``).
        data: images as calibration takes them: an iterable of batches (tensors, ``(input, target)`` tuples,
            dicts), one tensor, or a ``forward_loop(model)``; walked twice for a percentile rule.
        reference: calibration images to refit on and compare with instead of the installed thresholds. Give as
            many as ``data`` when ``data`` has fewer images than calibration had: the maximum (and high
            percentiles) of fewer images are smaller, so refits compare fairly only on equal numbers of images.
        tolerance: relative change of a site's median threshold beyond which it is flagged.
        noise: sampling noise c of a site's median ratio on N images: the tolerance applied is the larger of
            ``tolerance`` and ``c / sqrt(N)`` (N: the images refitted on, or the reference's when fewer), so that
            a few images do not flag sites by chance. 0 keeps ``tolerance`` at every N.

    Raises:
        ConfigError: a bad tolerance, a network without neurons, or thresholds whose shape does not match
            ``config.granularity``.
        CalibrationError: no data, or non-finite activations.
    """
    if not (isinstance(tolerance, (int, float)) and 0 < tolerance < math.inf):
        raise ConfigError(f"the calibration check's tolerance must be a positive number, got {tolerance!r}")
    if not (isinstance(noise, (int, float)) and 0 <= noise < math.inf):
        raise ConfigError(f"the calibration check's noise must be a number >= 0, got {noise!r}")
    neurons = dict(snn.neurons())
    if not neurons:
        raise ConfigError("the network has no spiking neurons whose thresholds could be checked")
    _check_config_fits(snn, config, neurons)
    refit, images = _refit(snn, config, data, "given")
    if reference is None:
        base, base_images = {name: n.threshold.detach().cpu().reshape(-1) for name, n in neurons.items()}, None
    else:
        base, base_images = _refit(snn, config, reference, "reference")
    check = ThresholdCheck(tolerance=tolerance, rule=str(config.threshold), granularity=config.granularity,
                           images=images, reference_images=base_images, noise=noise)
    for name, theta in refit.items():
        if base[name].numel() != theta.numel():
            raise ConfigError(f"site {name}: {base[name].numel()} installed threshold(s) but {theta.numel()} "
                              f"group(s) per {config.granularity}; check with the configuration the network was "
                              "converted with")
        neuron = neurons[name]
        check.sites.append(_compare(name, "identity" if _is_identity(neuron) else "relu", base[name], theta,
                                    check.applied_tolerance, getattr(neuron, UPPER_CLIP_ATTR, False)))
    log.info("%s", check.summary())
    return check


def _hook(neuron: nn.Module, observer: ActivationObserver, observes: str) -> Any:
    """Feed the neuron's input (threshold iteration's moments) or output (max, percentiles: the ReLU's output,
    an identity site's value) to ``observer`` on every analog call."""
    def watch(x: torch.Tensor) -> None:
        observer.channel_dim = _channel_dim(neuron.threshold, x.dim())
        observer(x)

    if observes == "input":
        return neuron.register_forward_pre_hook(lambda module, args: watch(args[0]))
    return neuron.register_forward_hook(lambda module, args, out: watch(out))


def _compare(name: str, kind: str, base: torch.Tensor, refit: torch.Tensor, tolerance: float, upper_clip: bool
             ) -> dict[str, Any]:
    on = base > 0
    ratios = refit[on].double() / base[on].double()
    entry: dict[str, Any] = {"site": name, "kind": kind, "groups": int(base.numel()),
                             "compared": int(on.sum()), "ratio": None, "ratio_min": None, "ratio_max": None,
                             "newly_active": int((~on & (refit > 0)).sum()), "upper_clip": upper_clip,
                             "flagged": False}
    if ratios.numel():
        ratio = float(ratios.median())
        entry.update(ratio=ratio, ratio_min=float(ratios.min()), ratio_max=float(ratios.max()),
                     flagged=not upper_clip and not 1 / (1 + tolerance) <= ratio <= 1 + tolerance)
    return entry
