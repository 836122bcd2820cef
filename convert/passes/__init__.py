"""Graph passes. ``NORMALIZE_PASSES`` is the ordered pipeline every model goes through before calibration."""
from snnconvert.convert.passes.arith import decompose_fused_arithmetic
from snnconvert.convert.passes.assign import functional_item_assignment, out_of_place_methods
from snnconvert.convert.passes.attention import write_out_attention
from snnconvert.convert.passes.normalize import (
    canonicalize_activations,
    decompose_bounded_relu,
    drop_dropout_and_identity,
    fold_bn,
    functional_layers_to_modules,
    move_maxpool_before_activation,
    out_of_place_activations,
)
from snnconvert.convert.passes.piecewise import fuse_piecewise_functions
from snnconvert.convert.passes.unpool import pair_max_unpooling

NORMALIZE_PASSES = (
    out_of_place_methods, decompose_bounded_relu, canonicalize_activations, out_of_place_activations,
    drop_dropout_and_identity, functional_item_assignment, decompose_fused_arithmetic, write_out_attention,
    fuse_piecewise_functions, functional_layers_to_modules, fold_bn, pair_max_unpooling,
    move_maxpool_before_activation,
)

__all__ = ["NORMALIZE_PASSES"]
