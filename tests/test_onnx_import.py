"""ONNX front end (snnconvert.convert.onnx_import) against onnxruntime.

Per-op models are written in ONNX's textual syntax (random initializers are attached by name), imported, and compared
with onnxruntime at ``rtol=1e-4, atol=1e-5`` (architecture.md §6). Whole models (resnet18, mobilenet_v2 at 32x32) are
exported with both torch exporters and checked at a batch size different from the export's. The full torchvision
list runs in ``bench/check_onnx_torchvision.py``.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import operator
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from conftest import TOLERANCES
from onnx import numpy_helper
from torch import nn

from snnconvert.convert.errors import OnnxImportError, UnsupportedOpError
from snnconvert.convert.onnx_import import MAX_OPSET, MIN_OPSET, load_onnx, supported_op_types

RTOL, ATOL = TOLERANCES["onnx_vs_ort"]["rtol"], TOLERANCES["onnx_vs_ort"]["atol"]
HAS_ONNXSCRIPT = importlib.util.find_spec("onnxscript") is not None


def textual(graph: str, opset: int = 17, **initializers: np.ndarray) -> onnx.ModelProto:
    """A model from ONNX text; ``initializers`` are attached by name, output shapes come from shape inference."""
    ir_version = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])
    model = onnx.parser.parse_model(f'<ir_version: {ir_version}, opset_import: ["" : {opset}]>\n{graph}')
    for output in model.graph.output:
        if not output.type.tensor_type.shape.dim:  # written as "float y": let shape inference fill it in
            output.type.tensor_type.ClearField("shape")
    for name, array in initializers.items():
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
    return onnx.shape_inference.infer_shapes(model)


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run_ort(model: onnx.ModelProto | str, x: np.ndarray) -> list[np.ndarray]:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def run_gm(gm: torch.fx.GraphModule, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = gm(torch.from_numpy(x))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def assert_matches_ort(model: onnx.ModelProto, *inputs: np.ndarray) -> torch.fx.GraphModule:
    gm = load_onnx(model)
    for x in inputs:
        for ours, ref in zip(run_gm(gm, x), run_ort(model, x), strict=True):
            assert ours.shape == ref.shape
            np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL)
    return gm


def module_types(gm: torch.fx.GraphModule) -> list[type]:
    return [type(gm.get_submodule(n.target)) for n in gm.graph.nodes if n.op == "call_module"]


def function_targets(gm: torch.fx.GraphModule) -> list:
    return [n.target for n in gm.graph.nodes if n.op in ("call_function", "call_method")]


# --------------------------------------------------------------------------------------------------------------------
# Per-op converters against onnxruntime
# --------------------------------------------------------------------------------------------------------------------
X4 = rand(2, 4, 9, 9)
OP_CASES = {
    "conv_asymmetric_pads": (
        "g (float[N,4,9,9] x) => (float y) { y = Conv <pads=[0,1,2,1], strides=[1,2]> (x, w, b) }",
        {"w": rand(5, 4, 3, 3), "b": rand(5)}, X4, 17, nn.Conv2d),
    "conv_groups_dilation": (
        "g (float[N,4,9,9] x) => (float y) { y = Conv <group=2, dilations=[2,2], pads=[2,2,2,2]> (x, w) }",
        {"w": rand(6, 2, 3, 3)}, X4, 13, nn.Conv2d),
    "conv_same_upper_stride2": (
        'g (float[N,4,9,9] x) => (float y) { y = Conv <auto_pad="SAME_UPPER", strides=[2,2]> (x, w, b) }',
        {"w": rand(3, 4, 4, 4), "b": rand(3)}, X4, 17, nn.Conv2d),
    "conv1d_valid": (
        'g (float[N,4,11] x) => (float y) { y = Conv <auto_pad="VALID"> (x, w, b) }',
        {"w": rand(5, 4, 3), "b": rand(5)}, rand(2, 4, 11), 17, nn.Conv1d),
    "conv_transpose": (
        "g (float[N,4,9,9] x) => (float y) {"
        " y = ConvTranspose <strides=[2,2], pads=[1,1,1,1], output_padding=[1,1]> (x, w, b) }",
        {"w": rand(4, 3, 3, 3), "b": rand(3)}, X4, 17, nn.ConvTranspose2d),
    "conv_transpose_asymmetric_group": (
        "g (float[N,4,9,9] x) => (float y) { y = ConvTranspose <strides=[2,2], pads=[0,1,1,0], group=2> (x, w) }",
        {"w": rand(4, 2, 3, 3)}, X4, 13, nn.ConvTranspose2d),
    "gemm_transb_alpha_beta": (
        "g (float[N,5] x) => (float y) { y = Gemm <transB=1, alpha=0.5, beta=2.0> (x, w, c) }",
        {"w": rand(4, 5), "c": rand(4)}, rand(3, 5), 13, nn.Linear),
    "gemm_transa_full_c": (
        "g (float[5,3] x) => (float y) { y = Gemm <transA=1> (x, w, c) }",
        {"w": rand(5, 4), "c": rand(3, 4)}, rand(5, 3), 17, nn.Linear),
    "matmul_add_is_linear": (
        "g (float[N,7,5] x) => (float y) { t = MatMul(x, w) y = Add(b, t) }",
        {"w": rand(5, 6), "b": rand(6)}, rand(2, 7, 5), 17, nn.Linear),
    "matmul_two_dynamic": (
        "g (float[N,7,5] x) => (float y) { t = Transpose <perm=[0,2,1]> (x) y = MatMul(x, t) }",
        {}, rand(2, 7, 5), 17, None),
    "batchnorm_2d": (
        "g (float[N,4,9,9] x) => (float y) { y = BatchNormalization <epsilon=1e-3> (x, s, b, m, v) }",
        {"s": rand(4), "b": rand(4), "m": rand(4), "v": np.abs(rand(4)) + 0.5}, X4, 15, nn.BatchNorm2d),
    "batchnorm_1d": (
        "g (float[N,6] x) => (float y) { y = BatchNormalization (x, s, b, m, v) }",
        {"s": rand(6), "b": rand(6), "m": rand(6), "v": np.abs(rand(6)) + 0.5}, rand(3, 6), 13, nn.BatchNorm1d),
    "maxpool_ceil": (
        "g (float[N,4,10,10] x) => (float y) { y = MaxPool <kernel_shape=[3,3], strides=[2,2], ceil_mode=1> (x) }",
        {}, rand(2, 4, 10, 10), 13, nn.MaxPool2d),
    "maxpool_asymmetric_pads": (
        "g (float[N,4,9,9] x) => (float y) { y = MaxPool <kernel_shape=[3,3], strides=[2,2], pads=[0,1,1,0]> (x) }",
        {}, X4, 17, nn.MaxPool2d),
    "maxpool_dilation_pads": (
        "g (float[N,4,9,9] x) => (float y) {"
        " y = MaxPool <kernel_shape=[2,2], dilations=[2,2], pads=[1,1,1,1]> (x) }",
        {}, X4, 17, nn.MaxPool2d),
    # found by fuzzing against onnxruntime: torch's max_pool refuses pads above half the undilated kernel
    "maxpool_dilated_same_pads": (
        "g (float[N,1,8] x) => (float y) { y = MaxPool <kernel_shape=[3], dilations=[2], pads=[2,2]> (x) }",
        {}, rand(2, 1, 8), 13, nn.MaxPool1d),
    # found by fuzzing: torch's 3-d average pool refuses an input smaller than the kernel before padding it
    "avgpool3d_input_shorter_than_kernel": (
        "g (float[N,1,2,3,3] x) => (float y) {"
        " y = AveragePool <kernel_shape=[3,1,1], pads=[1,0,0,1,0,0], count_include_pad=1> (x) }",
        {}, rand(2, 1, 2, 3, 3), 13, nn.AvgPool3d),
    # found by fuzzing: ... and after padding, where a ceil-mode window overhangs the input (zero-filled, not counted)
    "avgpool3d_ceil_window_over_a_short_input": (
        "g (float[N,2,2,5,5] x) => (float y) {"
        " y = AveragePool <kernel_shape=[3,3,3], strides=[2,2,2], ceil_mode=1> (x) }",
        {}, rand(2, 2, 2, 5, 5), 13, nn.AvgPool3d),
    "avgpool3d_ceil_window_over_a_short_input_pads_counted": (
        "g (float[N,2,1,5,4] x) => (float y) {"
        " y = AveragePool <kernel_shape=[3,3,3], strides=[2,2,2], pads=[1,0,1,0,0,1], ceil_mode=1,"
        " count_include_pad=1> (x) }",
        {}, rand(2, 2, 1, 5, 4), 13, nn.AvgPool3d),
    # TF's "SAME" average pooling as tf2onnx writes it (asymmetric pads, padding not counted): found by fuzzing
    "avgpool_same_upper_exclude_pad": (
        'g (float[N,4,8,8] x) => (float y) { y = AveragePool <kernel_shape=[3,3], strides=[2,2], auto_pad="SAME_UPPER">'
        " (x) }", {}, rand(2, 4, 8, 8), 17, nn.AvgPool2d),
    "avgpool_same_lower_exclude_pad_3d": (
        'g (float[N,2,5,6,7] x) => (float y) {'
        ' y = AveragePool <kernel_shape=[3,3,2], strides=[2,2,2], auto_pad="SAME_LOWER"> (x) }',
        {}, rand(2, 2, 5, 6, 7), 17, nn.AvgPool3d),
    "avgpool_asymmetric_exclude_pad_ceil": (
        "g (float[N,4,10,10] x) => (float y) {"
        " y = AveragePool <kernel_shape=[3,3], strides=[3,3], pads=[1,1,2,2], ceil_mode=1> (x) }",
        {}, rand(2, 4, 10, 10), 13, nn.AvgPool2d),
    "avgpool_oversized_exclude_pad_1d": (
        "g (float[N,4,9] x) => (float y) { y = AveragePool <kernel_shape=[3], strides=[2], pads=[0,2]> (x) }",
        {}, rand(2, 4, 9), 13, nn.AvgPool1d),
    "avgpool_count_include_pad": (
        "g (float[N,4,9,9] x) => (float y) {"
        " y = AveragePool <kernel_shape=[3,3], strides=[2,2], pads=[1,1,1,1], count_include_pad=1> (x) }",
        {}, X4, 17, nn.AvgPool2d),
    "avgpool_exclude_pad": (
        "g (float[N,4,9,9] x) => (float y) {"
        " y = AveragePool <kernel_shape=[3,3], strides=[1,1], pads=[1,1,1,1]> (x) }",
        {}, X4, 13, nn.AvgPool2d),
    "avgpool_asymmetric_include_pad": (
        "g (float[N,4,9,9] x) => (float y) {"
        " y = AveragePool <kernel_shape=[2,2], strides=[2,2], pads=[0,0,1,1], count_include_pad=1> (x) }",
        {}, X4, 19, nn.AvgPool2d),
    "global_average_pool": (
        "g (float[N,4,9,9] x) => (float y) { y = GlobalAveragePool(x) }", {}, X4, 13, nn.AdaptiveAvgPool2d),
    "clip_relu6": (
        "g (float[N,4,9,9] x) => (float y) { y = Clip(x, lo, hi) }",
        {"lo": np.float32(0), "hi": np.float32(6)}, 4 * X4, 13, nn.ReLU6),
    "clip_relu": (
        'g (float[N,4,9,9] x) => (float y) { y = Clip(x, lo, "") }', {"lo": np.float32(0)}, X4, 17, nn.ReLU),
    "clip_clamp": (
        "g (float[N,4,9,9] x) => (float y) { y = Clip(x, lo, hi) }",
        {"lo": np.float32(-0.5), "hi": np.float32(0.7)}, X4, 17, None),
    "leaky_relu": ("g (float[N,4,9,9] x) => (float y) { y = LeakyRelu <alpha=0.1> (x) }", {}, X4, 17, nn.LeakyReLU),
    "sigmoid_tanh": ("g (float[N,4,9,9] x) => (float y) { s = Sigmoid(x) y = Tanh(s) }", {}, X4, 13, nn.Sigmoid),
    "softmax_axis1": ("g (float[N,4,9,9] x) => (float y) { y = Softmax <axis=1> (x) }", {}, X4, 13, nn.Softmax),
    "gelu_opset20": ("g (float[N,4,9,9] x) => (float y) { y = Gelu(x) }", {}, X4, 20, nn.GELU),
    "gelu_tanh_opset20": (
        'g (float[N,4,9,9] x) => (float y) { y = Gelu <approximate="tanh"> (x) }', {}, X4, 20, nn.GELU),
    "layer_norm": (
        "g (float[N,7,6] x) => (float y) { y = LayerNormalization <epsilon=1e-6> (x, s, b) }",
        {"s": rand(6), "b": rand(6)}, rand(2, 7, 6), 17, nn.LayerNorm),
    "layer_norm_two_axes": (
        "g (float[N,7,6] x) => (float y) { y = LayerNormalization <axis=-2> (x, s) }",
        {"s": rand(7, 6)}, rand(2, 7, 6), 17, nn.LayerNorm),
    "gelu_erf_decomposition": (
        "g (float[N,4,9,9] x) => (float y) {"
        " d = Div(x, r2) e = Erf(d) a = Add(e, one) m = Mul(x, a) y = Mul(m, half) }",
        {"r2": np.float32(1.4142135), "one": np.float32(1), "half": np.float32(0.5)}, X4, 13, None),
    "sub_pow_sqrt_where": (
        "g (float[N,4,9,9] x) => (float y) {"
        " p = Pow(x, two) q = Sqrt(p) c = Greater(x, zero) s = Sub(one, q) y = Where(c, q, s) }",
        {"two": np.float32(2), "zero": np.float32(0), "one": np.float32(1)}, X4, 17, None),
    "flatten_axis2": ("g (float[N,4,9,9] x) => (float y) { y = Flatten <axis=2> (x) }", {}, X4, 13, None),
    "reshape_zero_and_minus_one": (
        "g (float[N,4,9,9] x) => (float y) { y = Reshape(x, shape) }",
        {"shape": np.array([0, -1, 9], dtype=np.int64)}, X4, 17, None),
    "transpose_concat": (
        "g (float[N,4,9,9] x) => (float y) { t = Transpose <perm=[0,1,3,2]> (x) y = Concat <axis=1> (x, t, c) }",
        {"c": rand(1, 2, 9, 9)}, rand(1, 4, 9, 9), 13, None),
    "split_sizes_opset13": (
        "g (float[N,4,9,9] x) => (float a, float b) { a, b = Split <axis=1> (x, sizes) }",
        {"sizes": np.array([1, 3], dtype=np.int64)}, X4, 13, None),
    "split_num_outputs_opset18": (
        "g (float[N,4,9,9] x) => (float a, float b) { a, b = Split <axis=2, num_outputs=2> (x) }", {}, X4, 18, None),
    "slice_steps_and_negative_step": (
        "g (float[N,4,9,9] x) => (float y) { a = Slice(x, st, en, ax, sp) y = Slice(a, st2, en2, ax2, sp2) }",
        {"st": np.array([1, 0], dtype=np.int64), "en": np.array([8, 9223372036854775807], dtype=np.int64),
         "ax": np.array([2, -1], dtype=np.int64), "sp": np.array([2, 3], dtype=np.int64),
         "st2": np.array([-1], dtype=np.int64), "en2": np.array([-9223372036854775807], dtype=np.int64),
         "ax2": np.array([1], dtype=np.int64), "sp2": np.array([-1], dtype=np.int64)}, X4, 13, None),
    "squeeze_unsqueeze": (
        "g (float[N,4,9,9] x) => (float y) { u = Unsqueeze(x, axes) y = Squeeze(u, axes2) }",
        {"axes": np.array([1, -1], dtype=np.int64), "axes2": np.array([1], dtype=np.int64)}, X4, 13, None),
    "pad_cut_wider_than_the_dim": (  # found by fuzzing: the padded tensor is cut (F.pad alone cuts the input first)
        "g (float[N,3,2] x) => (float y) { a = Pad(x, p1, v) y = Pad(a, p2) }",
        {"p1": np.array([0, 0, 3, 0, 0, -3], np.int64), "v": np.float32(0.5),
         "p2": np.array([0, -1, 2, 0, 3, -1], np.int64)}, rand(2, 3, 2), 15, None),
    "pad_constant_reflect_edge": (
        "g (float[N,4,9,9] x) => (float y) {"
        ' a = Pad(x, p1, v) b = Pad <mode="reflect"> (a, p2) y = Pad <mode="edge"> (b, p3) }',
        {"p1": np.array([0, 0, 1, 2, 0, 0, 2, 1], dtype=np.int64), "v": np.float32(0.5),
         "p2": np.array([0, 0, 2, 1, 0, 0, 1, 2], dtype=np.int64),
         "p3": np.array([0, 0, 0, 3, 0, 0, 1, 0], dtype=np.int64)}, X4, 13, None),
    "reduce_mean_attr_axes_opset13": (
        "g (float[N,4,9,9] x) => (float y) { y = ReduceMean <axes=[1,3], keepdims=0> (x) }", {}, X4, 13, None),
    "reduce_mean_input_axes_opset18": (
        "g (float[N,4,9,9] x) => (float y) { y = ReduceMean <keepdims=1> (x, axes) }",
        {"axes": np.array([-1, -2], dtype=np.int64)}, X4, 18, nn.AdaptiveAvgPool2d),
    "reduce_sum_max": (
        "g (float[N,4,9,9] x) => (float y) { s = ReduceSum <keepdims=0> (x, axes) y = ReduceMax <axes=[1]> (s) }",
        {"axes": np.array([3], dtype=np.int64)}, X4, 13, None),
    "avgpool_ceil_include_pad": (
        "g (float[N,4,10,10] x) => (float y) { y = AveragePool"
        " <kernel_shape=[3,3], strides=[2,2], pads=[1,1,1,1], ceil_mode=1, count_include_pad=1> (x) }",
        {}, rand(2, 4, 10, 10), 19, nn.AvgPool2d),
    "maxpool_ceil_pads": (
        "g (float[N,4,10,10] x) => (float y) {"
        " y = MaxPool <kernel_shape=[3,3], strides=[2,2], pads=[1,1,1,1], ceil_mode=1> (x) }",
        {}, rand(2, 4, 10, 10), 13, nn.MaxPool2d),
    "maxpool_same_lower": (
        "g (float[N,4,9,9] x) => (float y) {"
        ' y = MaxPool <kernel_shape=[3,3], strides=[2,2], auto_pad="SAME_LOWER"> (x) }',
        {}, X4, 13, nn.MaxPool2d),
    "global_max_pool": ("g (float[N,4,9,9] x) => (float y) { y = GlobalMaxPool(x) }", {}, X4, 13, nn.AdaptiveMaxPool2d),
    "conv3d_asymmetric_pads": (
        "g (float[N,4,5,5,5] x) => (float y) { y = Conv <pads=[1,0,1,1,0,1]> (x, w) }",
        {"w": rand(2, 4, 3, 3, 3)}, rand(2, 4, 5, 5, 5), 13, nn.Conv3d),
    "conv_transpose_output_shape": (
        "g (float[N,4,9,9] x) => (float y) { y = ConvTranspose <strides=[2,2], output_shape=[20,20]> (x, w) }",
        {"w": rand(4, 3, 3, 3)}, X4, 13, nn.ConvTranspose2d),
    "matmul_constant_left": (
        "g (float[N,4,9,9] x) => (float y) { y = MatMul(m, x) }", {"m": rand(9, 9)}, X4, 13, None),
    "gather_scalar_and_2d_indices": (
        "g (float[N,4,9,9] x) => (float y) { a = Gather <axis=1> (x, i) y = Gather <axis=-1> (a, j) }",
        {"i": np.array([3, 1, 1], dtype=np.int64), "j": np.array([[0, -1], [2, 3]], dtype=np.int64)}, X4, 13, None),
    "gather_nd_spatial_pairs": (  # the dynamo exporter's AdaptiveAvgPool over unequal windows, in small
        "g (float[N,4,9,9] x) => (float y) {"
        " t = Transpose <perm=[2,3,0,1]> (x) g = GatherND(t, i) y = Transpose <perm=[2,3,0,1]> (g) }",
        {"i": np.array([[[0, 0], [8, 8]], [[4, -1], [-9, 2]], [[1, 1], [1, 1]]], dtype=np.int64)}, X4, 13, None),
    "gather_nd_one_dim": (
        "g (float[N,4,9,9] x) => (float y) { t = Transpose <perm=[1,0,2,3]> (x) y = GatherND(t, i) }",
        {"i": np.array([[3], [0], [3]], dtype=np.int64)}, X4, 13, None),
    "constant_node_tile": (
        "g (float[N,4,9,9] x) => (float y) {"
        " k = Constant <value=float[1,4,1,1] {1,2,3,4}> () m = Mul(x, k) y = Tile(m, reps) }",
        {"reps": np.array([1, 2, 1, 2], dtype=np.int64)}, X4, 13, None),
    "variadic_max_min_mean_sum": (
        "g (float[N,4,9,9] x) => (float y) { a = Max(x, c) b = Min(a, d) e = Mean(x, b, c) y = Sum(e, x) }",
        {"c": rand(1, 4, 1, 1), "d": np.float32(0.3)}, X4, 13, None),
    "mod_fmod_hardsigmoid_hardswish": (
        "g (float[N,4,9,9] x) => (float y) { a = Mod <fmod=1> (x, c) b = HardSigmoid(a) y = HardSwish(b) }",
        {"c": rand(1, 4, 1, 1) + 3}, 5 * X4, 14, nn.Hardswish),
    "elu_softplus_logsoftmax": (
        "g (float[N,4,9,9] x) => (float y) { a = Elu(x) b = Softplus(a) y = LogSoftmax <axis=1> (b) }",
        {}, X4, 13, nn.LogSoftmax),
    "clip_max_only": (
        'g (float[N,4,9,9] x) => (float y) { y = Clip(x, "", hi) }', {"hi": np.float32(0.2)}, X4, 13, None),
    "flatten_axis0_reduce_prod": (
        "g (float[N,4,9,9] x) => (float y) { p = ReduceProd <axes=[2]> (x) y = Flatten <axis=0> (p) }",
        {}, X4, 13, None),
    "slice_end_from_shape": (
        "g (float[N,4,9,9] x) => (float y) { s = Shape(x) e = Slice(s, i2, i3) y = Slice(x, i0, e, i2) }",
        {"i0": np.array([0], dtype=np.int64), "i2": np.array([2], dtype=np.int64),
         "i3": np.array([3], dtype=np.int64)}, X4, 13, None),
    "pad_axes_opset18": (
        'g (float[N,4,9,9] x) => (float y) { y = Pad(x, p, "", ax) }',
        {"p": np.array([1, 2, 3, 4], dtype=np.int64), "ax": np.array([1, 3], dtype=np.int64)}, X4, 18, None),
    "split_three_sizes_opset18": (
        "g (float[N,4,9,9] x) => (float a, float b, float e) { a, b, e = Split <axis=3> (x, sz) }",
        {"sz": np.array([2, 3, 4], dtype=np.int64)}, X4, 18, None),
    "integer_div_cast": (
        "g (float[N,4,9,9] x) => (float y) { q = Cast <to=7> (x) r = Div(q, three) y = Cast <to=1> (r) }",
        {"three": np.int64(3)}, 10 * X4, 13, None),
    "unary_ops": (
        "g (float[N,4,9,9] x) => (float y) {"
        " a = Abs(x) b = Add(a, one) c = Log(b) d = Exp(c) e = Neg(d) f = Reciprocal(e) g = Sin(f) h = Cos(g)"
        " i = Floor(x) j = Ceil(x) k = Round(x) l = Sign(x) m = Softsign(x) n = IsNaN(x) o = Where(n, one, m)"
        " y = Sum(h, i, j, k, l, o) }",
        {"one": np.float32(1)}, 3 * X4, 13, None),
    "logical_and_bitwise_ops": (
        "g (float[N,4,9,9] x) => (float y) {"
        " l1 = Less(x, zero) l2 = GreaterOrEqual(x, half) l3 = LessOrEqual(x, one) o = Or(l1, l2) a = And(o, l3)"
        " xr = Xor(a, l1) n = Not(xr) c = CastLike(n, x) q = Cast <to=7> (x) b1 = BitwiseAnd(q, three)"
        " b2 = BitwiseOr(b1, one_i) bf = Cast <to=1> (b2) m = Mul(c, x) y = Add(m, bf) }",
        {"zero": np.float32(0), "half": np.float32(0.5), "one": np.float32(1), "three": np.int64(3),
         "one_i": np.int64(1)}, 4 * X4, 18, None),
    "size_range": (
        "g (float[N,4,9,9] x) => (float y) {"
        " s = Size(x) f = Cast <to=1> (s) d = Div(x, f) r = Range(start, limit, delta) y = Add(d, r) }",
        {"start": np.float32(0), "limit": np.float32(4.5), "delta": np.float32(0.5)}, X4, 13, None),
    "range_empty_against_delta": (  # found by fuzzing: bounds against delta's sign give an empty range
        "g (float[N,3] x) => (float y) { r = Range(a, b, d) s = ReduceSum <keepdims=0> (x) y = Add(r, s) }",
        {"a": np.float32(-2.0), "b": np.float32(-1.9), "d": np.float32(-0.7)}, rand(2, 3), 14, None),
    "range_descending": (
        "g (float[N,3] x) => (float y) { r = Range(a, b, d) s = ReduceSum <keepdims=1> (x) y = Add(s, r) }",
        {"a": np.float32(1.5), "b": np.float32(-2.0), "d": np.float32(-0.7)}, rand(2, 3), 14, None),
    "range_of_the_batch_size": (  # the dynamo exporter's as_strided lowering: indices built from Range(0, batch)
        "g (float[N,4,9,9] x) => (float y) {"
        " s = Shape(x) n = Gather <axis=0> (s, zero) r = Range(zero, n, one) u = Unsqueeze(r, one)"
        " i = Mul(u, stride) j = Add(i, offsets) flat = Reshape(x, minus1) y = Gather <axis=0> (flat, j) }",
        {"zero": np.int64(0), "one": np.int64(1), "stride": np.int64(324), "minus1": np.array([-1], np.int64),
         "offsets": np.array([[0, 81, 162, 243]], np.int64)}, X4, 18, None),
    # nearest with other coordinates and rounding (the ONNX defaults, TF's modes) by whole factors: source indices
    "resize_nearest_onnx_defaults": (
        'g (float[N,4,9,9] x) => (float y) { y = Resize <mode="nearest"> (x, roi, sc) }',
        {"roi": np.zeros(0, np.float32), "sc": np.array([1, 1, 2, 3], np.float32)}, X4, 13, None),
    "resize_nearest_tf_half_pixel_sizes": (
        'g (float[2,4,9,9] x) => (float y) { y = Resize <mode="nearest", coordinate_transformation_mode='
        '"tf_half_pixel_for_nn", nearest_mode="round_prefer_ceil"> (x, , , sz) }',
        {"sz": np.array([2, 4, 18, 9], np.int64)}, X4, 13, None),
    "resize_nearest_align_corners_ceil": (
        'g (float[2,4,9,9] x) => (float y) { y = Resize <mode="nearest", coordinate_transformation_mode='
        '"align_corners", nearest_mode="ceil"> (x, , , sz) }',
        {"sz": np.array([2, 4, 27, 18], np.int64)}, X4, 13, None),
    "resize_nearest_scales": (  # F.interpolate(scale_factor=2) / nn.Upsample as torch's exporter writes it
        'g (float[N,4,9,9] x) => (float y) { y = Resize <mode="nearest", coordinate_transformation_mode="asymmetric",'
        ' nearest_mode="floor"> (x, roi, scales) }',
        {"roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 2, 2], np.float32)}, X4, 13, None),
    "resize_bilinear_half_pixel_fraction": (
        'g (float[N,4,9,9] x) => (float y) { y = Resize <mode="linear", coordinate_transformation_mode='
        '"pytorch_half_pixel"> (x, roi, scales) }',
        {"roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 1.5, 0.5], np.float32)}, X4, 17, None),
    "resize_bilinear_align_corners_sizes": (  # sizes = (N, C) of the input and a constant (16, 5)
        'g (float[N,4,9,9] x) => (float y) { s = Shape(x) nc = Slice(s, zero, two) sz = Concat <axis=0> (nc, hw)'
        ' y = Resize <mode="linear", coordinate_transformation_mode="align_corners"> (x, , , sz) }',
        {"zero": np.array([0], np.int64), "two": np.array([2], np.int64), "hw": np.array([16, 5], np.int64)},
        X4, 18, None),
    "resize_bicubic_half_pixel": (
        'g (float[N,4,9,9] x) => (float y) { y = Resize <mode="cubic", coordinate_transformation_mode="half_pixel",'
        ' cubic_coeff_a=-0.75> (x, roi, scales) }',
        {"roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 2, 2], np.float32)}, X4, 13, None),
    # linear and cubic forms F.interpolate has no mode for: per-axis taps with the spec's weights
    "resize_bilinear_asymmetric": (  # TF 1's resize_bilinear (half_pixel_centers=False) as tf2onnx writes it
        'g (float[N,4,9,9] x) => (float y) { y = Resize <mode="linear", coordinate_transformation_mode="asymmetric">'
        ' (x, roi, sc) }', {"roi": np.zeros(0, np.float32), "sc": np.array([1, 1, 2, 0.5], np.float32)}, X4, 13, None),
    "resize_bicubic_tf_half_pixel_exclude_outside": (  # TF 2's bicubic resize: a = -0.5, taps outside dropped
        'g (float[N,4,9,9] x) => (float y) { y = Resize <mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1>'
        ' (x, roi, sc) }', {"roi": np.zeros(0, np.float32), "sc": np.array([1, 1, 1.5, 2.5], np.float32)}, X4, 13,
        None),
    "resize_bicubic_asymmetric_sizes": (
        'g (float[2,4,9,9] x) => (float y) { y = Resize <mode="cubic", coordinate_transformation_mode="asymmetric">'
        ' (x, , , sz) }', {"sz": np.array([2, 4, 20, 13], np.int64)}, X4, 13, None),
    "resize_linear_half_pixel_symmetric": (  # 9 * 0.75 = 6.75 -> 6: the output canvas is centred on the input
        'g (float[N,4,9,9] x) => (float y) { y = Resize <mode="linear", coordinate_transformation_mode='
        '"half_pixel_symmetric"> (x, roi, sc) }',
        {"roi": np.zeros(0, np.float32), "sc": np.array([1, 1, 0.75, 1.7], np.float32)}, X4, 19, None),
    "resize_trilinear_asymmetric_and_one_dim_kept": (
        'g (float[N,3,4,5,6] x) => (float y) { y = Resize <mode="linear", coordinate_transformation_mode='
        '"asymmetric"> (x, roi, sc) }',
        {"roi": np.zeros(0, np.float32), "sc": np.array([1, 1, 2, 1, 0.5], np.float32)}, rand(2, 3, 4, 5, 6), 13,
        None),
    "resize_to_the_size_of_the_input_shape": (  # F.interpolate(y, size=x.shape[-2:]): sizes from Shape, batch dynamic
        'g (float[N,4,9,9] x) => (float y) { p = MaxPool <kernel_shape=[3,3], strides=[3,3]> (x) s = Shape(x)'
        ' y = Resize <mode="linear", coordinate_transformation_mode="pytorch_half_pixel"> (p, , , s) }',
        {}, X4, 17, None),
    "pad_amounts_from_a_padded_size": (  # timm's TF "same" padding: pads computed from the (padded) input size
        'g (float[N,4,9,9] x) => (float y) {'
        ' s = Shape(x) h = Gather <axis=0> (s, two) hf = Cast <to=1> (h) d = Div(hf, three) c = Ceil(d)'
        ' e = Sub(c, one) a = Cast <to=7> (e) q = Concat <axis=0> (z2, a, a, z2, a, a) p = Pad(x, q)'
        ' s2 = Shape(p) h2 = Gather <axis=0> (s2, two) hf2 = Cast <to=1> (h2) d2 = Div(hf2, three) c2 = Ceil(d2)'
        ' e2 = Sub(c2, one) a2 = Cast <to=7> (e2) q2 = Concat <axis=0> (z2, a2, a2, z2, a2, a2) y = Pad(p, q2) }',
        {"two": np.array([2], np.int64), "three": np.float32(3), "one": np.float32(1),
         "z2": np.zeros(2, np.int64)}, X4, 17, None),
    "norms_and_log_sums_attribute_axes": (
        "g (float[N,4,9,9] x) => (float y) { a = ReduceL1 <axes=[1]> (x) b = ReduceL2 <axes=[1]> (x)"
        " c = ReduceSumSquare <axes=[1]> (x) d = ReduceLogSumExp <axes=[1]> (x) m = Abs(x)"
        " e = ReduceLogSum <axes=[1]> (m) y = Sum(a, b, c, d, e) }", {}, X4, 17, None),
    "norms_and_log_sums_input_axes": (
        "g (float[N,4,9,9] x) => (float y) { a = ReduceL1 <keepdims=0> (x, ax) b = ReduceL2 <keepdims=0> (x, ax)"
        " c = ReduceSumSquare <keepdims=0> (x, ax) d = ReduceLogSumExp <keepdims=0> (x, ax) m = Abs(x)"
        " e = ReduceLogSum <keepdims=0> (m, ax) y = Sum(a, b, c, d, e) }", {"ax": np.array([2, 3], np.int64)}, X4,
        18, None),
    "lrn_as_alexnet_has_it": (
        "g (float[N,4,9,9] x) => (float y) { y = LRN <size=5, alpha=0.0001, beta=0.75, bias=1.0> (x) }", {},
        10 * X4, 13, nn.LocalResponseNorm),
    "instance_norm_affine": (
        "g (float[N,4,9,9] x) => (float y) { y = InstanceNormalization <epsilon=1e-3> (x, s, b) }",
        {"s": rand(4), "b": rand(4)}, X4, 17, None),
    "group_norm_as_the_exporter_writes_it": (  # reshape to [N, groups, -1], unit-scale instance norm, reshape back
        "g (float[N,4,9,9] x) => (float y) { r = Reshape(x, g2) n = InstanceNormalization (r, ones, zeros)"
        " s = Shape(x) t = Reshape(n, s) u = Mul(t, w) y = Add(u, b) }",
        {"g2": np.array([0, 2, -1], np.int64), "ones": np.ones(2, np.float32), "zeros": np.zeros(2, np.float32),
         "w": rand(4, 1, 1), "b": rand(4, 1, 1)}, X4, 17, None),
    "cast_roundtrip": (
        "g (float[N,4,9,9] x) => (float y) { c = Cast <to=6> (x) d = Cast <to=1> (c) y = Add(x, d) }",
        {}, 3 * X4, 13, None),
    # pytorch_half_pixel maps an output axis of length 1 to input coordinate 0 (PyTorch: the window's centre)
    "resize_linear_pytorch_half_pixel_to_one_row": (
        'g (float[N,4,4,5] x) => (float y) { y = Resize <mode="linear", coordinate_transformation_mode='
        '"pytorch_half_pixel"> (x, roi, scales) }',
        {"roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 0.25, 2], np.float32)}, rand(2, 4, 4, 5), 17, None),
    "resize_cubic_pytorch_half_pixel_to_one_pixel": (
        'g (float[N,4,4,5] x) => (float y) { y = Resize <mode="cubic", coordinate_transformation_mode='
        '"pytorch_half_pixel"> (x, roi, scales) }',
        {"roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 0.25, 0.2], np.float32)}, rand(2, 4, 4, 5), 17,
        None),
    "resize_linear_pytorch_half_pixel_sizes_to_one_column": (
        'g (float[N,4,9,9] x) => (float y) { s = Shape(x) nc = Slice(s, zero, two) sz = Concat <axis=0> (nc, hw)'
        ' y = Resize <mode="linear", coordinate_transformation_mode="pytorch_half_pixel"> (x, , , sz) }',
        {"zero": np.array([0], np.int64), "two": np.array([2], np.int64), "hw": np.array([7, 1], np.int64)},
        X4, 18, None),
    "gather_runtime_negative_indices": (  # index_select refuses negative indices: wrapped as ONNX counts them
        "g (float[N,2] x) => (float y) { i = Cast <to=7> (x) y = Gather <axis=0> (t, i) }",
        {"t": rand(3, 4)}, np.array([[0, -1], [2, -3], [1, -2]], np.float32), 17, None),
    "pad_edge_first_dim_of_a_matrix": (  # PyTorch pads only after a leading dim: one is added for the call
        'g (float[N,4] x) => (float y) { y = Pad <mode="edge"> (x, p) }',
        {"p": np.array([1, 0, 2, 1], np.int64)}, rand(3, 4), 17, None),
    "pad_reflect_last_dim_of_a_feature_map": (  # F.pad needs the amounts of two dims on a 4-d input
        'g (float[N,4,9,9] x) => (float y) { y = Pad <mode="reflect"> (x, p) }',
        {"p": np.array([0, 0, 0, 2, 0, 0, 0, 1], np.int64)}, X4, 17, None),
    "instance_norm_single_element": (  # F.instance_norm refuses one spatial element; the result is the bias
        "g (float[N,3,1,1] x) => (float y) { y = InstanceNormalization (x, s, b) }",
        {"s": rand(3), "b": rand(3, seed=1)}, rand(2, 3, 1, 1), 17, None),
    "layer_norm_scale_with_leading_unit_dims": (
        "g (float[N,7,6] x) => (float y) { y = LayerNormalization (x, s, b) }",
        {"s": rand(1, 6), "b": rand(1, 1, 6, seed=1)}, rand(2, 7, 6), 17, nn.LayerNorm),
    "where_isnan_guard_broadcasting_to_more_dims": (  # not nan_to_num: the constant adds a dim
        "g (float[N,3] x) => (float y) { n = IsNaN(x) y = Where(n, c, x) }",
        {"c": np.full((1, 1, 1), 7.0, np.float32)}, np.array([[1, np.nan, 2], [np.nan, 3, 4]], np.float32), 17,
        None),
    "where_constant_scalar_condition": (
        "g (float[N,3] x) => (float y) { a = Where(t, x, m) b = Where(f, m, a) c = Where(t, m, x) y = Add(b, c) }",
        {"t": np.array(True), "f": np.array(False), "m": np.float32(-1)}, rand(2, 3), 17, None),
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_op_matches_onnxruntime(case: str) -> None:
    text, inits, x, opset, expected_module = OP_CASES[case]
    gm = assert_matches_ort(textual(text, opset, **inits), x)
    if expected_module is not None:
        assert expected_module in module_types(gm)


def test_matmul_add_fuses_into_linear_with_bias() -> None:
    text, inits, x, opset, _ = OP_CASES["matmul_add_is_linear"]
    gm = load_onnx(textual(text, opset, **inits))
    (linear,) = [gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module"]
    assert isinstance(linear, nn.Linear) and linear.bias is not None
    assert operator.add not in function_targets(gm)


def test_asymmetric_conv_pads_become_explicit_pad() -> None:
    text, inits, _, opset, _ = OP_CASES["conv_asymmetric_pads"]
    gm = load_onnx(textual(text, opset, **inits))
    targets = [n.target for n in gm.graph.nodes if n.op != "placeholder"]
    assert targets[0] is torch.nn.functional.pad and gm.get_submodule(targets[1]).padding == (0, 0)


def test_clip_relu_and_relu6_become_modules_not_clamp() -> None:
    for case in ("clip_relu6", "clip_relu"):
        text, inits, _, opset, _ = OP_CASES[case]
        assert torch.clamp not in function_targets(load_onnx(textual(text, opset, **inits)))


@pytest.mark.parametrize("body, zero, relu", [
    ("y = Max(x, z)", np.float32(0), True),
    ("y = Max(z, x)", np.zeros((1, 3, 1, 1), np.float32), True),
    ("y = Max(x, z)", np.zeros((5,), np.float32), True),
    ('y = LeakyRelu <alpha=0.0> (x)', None, True),
    ("y = Max(x, z)", np.full((1,), 0.1, np.float32), False),  # not zero
    ("y = Max(x, z)", np.zeros((2, 1, 1, 1, 1), np.float32), False),  # broadcasting enlarges x
    ("y = Max(x, z, z)", np.float32(0), False),  # three operands: a chain
])
def test_max_with_zero_is_a_relu(body, zero, relu) -> None:
    """Converters write ReLU as Max(x, 0) (and LeakyRelu with slope 0): an ``nn.ReLU`` module, which the conversion
    makes a spiking site, where the zero does not change x's shape; the same values as onnxruntime either way."""
    inits = {} if zero is None else {"z": zero}
    gm = assert_matches_ort(textual(f"g (float[N,3,4,5] x) => (float y) {{ {body} }}", 17, **inits),
                            rand(2, 3, 4, 5))
    assert (nn.ReLU in module_types(gm)) is relu
    assert (torch.maximum in function_targets(gm)) is (not relu and zero is not None)


def test_conv_bn_relu_maxpool_structure() -> None:
    text = """g (float[N,3,16,16] x) => (float y) {
        c = Conv <pads=[1,1,1,1], kernel_shape=[3,3]> (x, w, b)
        n = BatchNormalization (c, s, bb, m, v)
        r = Relu(n)
        y = MaxPool <kernel_shape=[2,2], strides=[2,2]> (r)
    }"""
    inits = {"w": rand(8, 3, 3, 3), "b": rand(8), "s": rand(8), "bb": rand(8), "m": rand(8), "v": np.abs(rand(8)) + 1}
    gm = assert_matches_ort(textual(text, 13, **inits), rand(2, 3, 16, 16))
    assert module_types(gm) == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert not gm.training and all(p.dtype == torch.float32 for p in gm.parameters())


def test_node_and_module_metadata() -> None:
    text = 'g (float[batch,3,16,16] x) => (float y) { c = Conv <pads=[1,1,1,1]> (x, w) y = Relu(c) }'
    model = textual(text, 17, w=rand(4, 3, 3, 3))
    model.graph.node[0].name = "/features/0/Conv"
    onnx.helper.set_model_props(model, {"author": "test"})
    gm = load_onnx(model)
    for node in gm.graph.nodes:
        assert set(node.meta["onnx"]) == {"name", "op_type", "opset"}
    conv = next(n for n in gm.graph.nodes if n.op == "call_module" and "Conv" in n.meta["onnx"]["op_type"])
    assert conv.target == "features_0_Conv" and conv.meta["onnx"] == {"name": "/features/0/Conv", "op_type": "Conv",
                                                                      "opset": 17}
    meta = gm.meta["onnx"]
    assert meta["input_name"] == "x" and meta["input_shape"] == [None, 3, 16, 16] and meta["input_dtype"] == "float32"
    assert meta["opset"] == 17 and meta["metadata_props"] == {"author": "test"}


# --------------------------------------------------------------------------------------------------------------------
# Shape sub-graphs and dynamic batch
# --------------------------------------------------------------------------------------------------------------------
def test_shape_chain_reshape_keeps_dynamic_batch() -> None:
    text = """g (float[batch,4,9,9] x) => (float[batch,36,9] y) {
        s = Shape(x)
        b = Gather <axis=0> (s, zero)
        bu = Unsqueeze(b, ax0)
        h = Gather <axis=0> (s, one)
        w = Gather <axis=0> (s, two)
        hw = Mul(h, w)
        hwu = Unsqueeze(hw, ax0)
        shape = Concat <axis=0> (bu, hwu, minus1)
        y = Reshape(x, shape)
    }"""
    inits = {"zero": np.int64(0), "one": np.int64(1), "two": np.int64(2),
             "ax0": np.array([0], dtype=np.int64), "minus1": np.array([-1], dtype=np.int64)}
    gm = assert_matches_ort(textual(text, 13, **inits), rand(1, 4, 9, 9), rand(5, 4, 9, 9))
    reshape = next(n for n in gm.graph.nodes if n.target is torch.reshape)
    assert reshape.args[1] == (-1, 36, 9)  # folded statically; batch stays dynamic
    assert "size" not in function_targets(gm)


def test_expand_with_shape_from_batch_and_where_pattern() -> None:
    # The TorchScript exporter's spelling of class_token.expand(n, -1, -1) (torchvision ViT).
    text = """g (float[batch,5,8] x) => (float y) {
        s = Shape(x)
        b = Gather <axis=0> (s, zero)
        bu = Unsqueeze(b, ax0)
        shape = Concat <axis=0> (bu, minus1, minus1)
        ones = ConstantOfShape <value=int64[1] {1}> (three)
        neg = Mul(ones, mone)
        eq = Equal(shape, neg)
        target = Where(eq, ones, shape)
        e = Expand(tok, target)
        y = Concat <axis=1> (e, x)
    }"""
    inits = {"zero": np.int64(0), "ax0": np.array([0], dtype=np.int64), "minus1": np.array([-1], dtype=np.int64),
             "three": np.array([3], dtype=np.int64), "mone": np.int64(-1), "tok": rand(1, 1, 8)}
    gm = assert_matches_ort(textual(text, 17, **inits), rand(2, 5, 8), rand(4, 5, 8))
    assert "expand" in function_targets(gm)


def test_symbolic_reshape_with_two_dynamic_entries_reads_size() -> None:
    # Two dynamic entries: the importer must read x.size(0) at run time instead of guessing.
    text = """g (float[batch,6,4] x) => (float[batch,b2,c] y) {
        s = Shape(x)
        b = Gather <axis=0> (s, zero)
        b2 = Mul(b, two)
        bu = Unsqueeze(b, ax0)
        b2u = Unsqueeze(b2, ax0)
        shape = Concat <axis=0> (bu, b2u, minus1)
        t = Concat <axis=0> (x, x)
        f = Reshape(t, flat)
        y = Reshape(f, shape)
    }"""
    inits = {"zero": np.int64(0), "two": np.int64(2), "ax0": np.array([0], dtype=np.int64),
             "minus1": np.array([-1], dtype=np.int64), "flat": np.array([-1], dtype=np.int64)}
    gm = assert_matches_ort(textual(text, 13, **inits), rand(1, 6, 4), rand(3, 6, 4))
    assert "size" in function_targets(gm)


def test_identity_and_dropout_are_pass_through() -> None:
    text = "g (float[N,4] x) => (float y) { a = Identity(x) b = Dropout(a) y = Relu(b) }"
    gm = assert_matches_ort(textual(text, 13), rand(3, 4))
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "output"]


def test_external_data_next_to_the_model(tmp_path) -> None:
    model = textual("g (float[N,4,9,9] x) => (float y) { y = Conv(x, w, b) }", 17, w=rand(8, 4, 3, 3), b=rand(8))
    path = tmp_path / "model.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data",
              size_threshold=0)
    assert (tmp_path / "model.onnx.data").exists()
    gm = load_onnx(path)
    np.testing.assert_allclose(run_gm(gm, X4)[0], run_ort(str(path), X4)[0], rtol=RTOL, atol=ATOL)
    assert gm.meta["onnx"]["path"] == str(path)
    (tmp_path / "model.onnx.data").unlink()
    with pytest.raises(OnnxImportError) as info:
        load_onnx(path)
    _assert_one_line(info)


def test_result_survives_deepcopy_and_retrace() -> None:
    text, inits, x, opset, _ = OP_CASES["conv_same_upper_stride2"]
    gm = copy.deepcopy(load_onnx(textual(text, opset, **inits)))
    retraced = torch.fx.symbolic_trace(gm)
    np.testing.assert_allclose(run_gm(retraced, x)[0], run_ort(textual(text, opset, **inits), x)[0], rtol=RTOL,
                               atol=ATOL)


# --------------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------------
def test_unsupported_ops_are_all_listed_once() -> None:
    text = """g (float[N,4,9,9] x) => (float[N,4,9,9] y) {
        a = Hardmax <axis=1> (x)
        b = Relu(a)
        c = LpNormalization <axis=1> (b)
        d = com.example.Frobnicate(c)
        y = Hardmax <axis=2> (d)
    }"""
    model = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 17, "com.example" : 3]>\n{text}')
    with pytest.raises(UnsupportedOpError) as info:
        load_onnx(model)
    nodes = info.value.nodes
    assert [n.op for n in nodes] == ["Hardmax", "LpNormalization", "Frobnicate", "Hardmax"]
    assert nodes[0].target == "ai.onnx::Hardmax (opset 17)" and nodes[1].name == "LpNormalization_2"
    assert nodes[2].target == "com.example::Frobnicate (opset 3)"
    assert "Conv" in str(info.value) and "Relu" in supported_op_types()


def test_unsupported_ops_behind_a_shapeless_output_are_listed() -> None:
    """A graph output without a shape that inference cannot give one (a custom op's) fails the checker: the model is
    checked without it, and the import lists every unsupported node, not the checker's missing-field line."""
    text = """g (float[N,4,9,9] x) => (float y) { a = Hardmax <axis=1> (x)  y = com.example.Frobnicate(a) }"""
    model = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 17, "com.example" : 3]>\n{text}')
    model.graph.output[0].type.tensor_type.ClearField("shape")
    with pytest.raises(UnsupportedOpError) as info:
        load_onnx(model)
    assert [n.op for n in info.value.nodes] == ["Hardmax", "Frobnicate"]


def test_an_input_that_is_also_a_shapeless_output_imports() -> None:
    """An input passed through as an output without a shape is not an input without a shape."""
    model = textual("g (float[N,4] x) => (float y, float x) { y = Relu(x) }", 17)
    model.graph.output[1].type.tensor_type.ClearField("shape")
    gm = assert_matches_ort(model, rand(2, 4))
    assert gm.meta["onnx"]["input_shape"] == [None, 4]


def test_unsupported_attribute_is_collected_with_unknown_ops() -> None:
    text = """g (float[N,4,9,9] x) => (float y) {
        a = AveragePool <kernel_shape=[2,2], dilations=[2,2]> (x)
        y = Hardmax(a)
    }"""
    with pytest.raises(UnsupportedOpError) as info:
        load_onnx(textual(text, 19))
    assert [n.op for n in info.value.nodes] == ["AveragePool", "Hardmax"]
    assert "dilations" in str(info.value)


@pytest.mark.parametrize("pool", ["AveragePool <kernel_shape=[4,2], strides=[2,2], pads=[1,0,1,0]",
                                  "MaxPool <kernel_shape=[2,2], strides=[1,3], pads=[0,0,0,0], ceil_mode=1"])
def test_pooling_windows_past_a_static_input_are_listed(pool: str) -> None:
    """Found by fuzzing: a kernel longer than the padded input gives no output position by the spec (onnxruntime
    and shape inference truncate the negative quotient and compute one): refused at import, not a run-time error."""
    model = textual(f"g (float[N,2,1,1] x) => (float y) {{ y = {pool}> (x) }}", 17)
    with pytest.raises(UnsupportedOpError, match="no output position"):
        load_onnx(model)


def test_nearest_resize_by_a_fraction_outside_torchs_mode_is_listed() -> None:
    """The ONNX default nearest (half_pixel + round_prefer_floor) by a factor of 1.5: source positions fall near
    rounding ties where onnxruntime's arithmetic and the spec's differ; refused, not guessed."""
    model = textual('g (float[N,4,6,6] x) => (float y) { y = Resize <mode="nearest"> (x, roi, scales) }', 18,
                    roi=np.zeros(0, np.float32), scales=np.array([1, 1, 1.5, 1.5], np.float32))
    with pytest.raises(UnsupportedOpError, match="by a factor other than a whole number"):
        load_onnx(model)


@pytest.mark.parametrize("attrs, scales, reason", [
    ('mode="linear", antialias=1', [1, 1, 0.5, 0.5], "antialias=1"),
    ('mode="linear", coordinate_transformation_mode="tf_crop_and_resize"', [1, 1, 2, 2],
     "coordinate_transformation_mode"),
    ('mode="linear", coordinate_transformation_mode="asymmetric"', [1, 1, 0.1, 2], "an output size of 0"),
    ('mode="linear"', [1, 1, 2, 0.1], "an output size of 0"),  # F.interpolate: a run-time error, not an import one
])
def test_resize_forms_it_cannot_express_are_listed(attrs: str, scales: list, reason: str) -> None:
    text = f"g (float[N,4,9,9] x) => (float y) {{ y = Resize <{attrs}> (x, roi, scales) }}"
    model = textual(text, 18, roi=np.zeros(0, np.float32), scales=np.array(scales, np.float32))
    with pytest.raises(UnsupportedOpError, match=reason):
        load_onnx(model)
    channel = textual('g (float[N,4,9,9] x) => (float y) { y = Resize <mode="linear"> (x, roi, scales) }', 18,
                      roi=np.zeros(0, np.float32), scales=np.array([1, 2, 2, 2], np.float32))
    with pytest.raises(UnsupportedOpError, match="only the spatial dims"):
        load_onnx(channel)


def test_instance_norm_over_run_time_sizes_takes_a_single_element() -> None:
    """Found by fuzzing: with spatial sizes known only at run time, F.instance_norm refused an input of one element
    (onnxruntime: the bias); both forms the exporters write run at 1 x 1 and at other sizes."""
    model = textual("g (float[N,3,H,W] x) => (float y) { y = InstanceNormalization <epsilon=1e-3> (x, s, b) }", 17,
                    s=rand(3), b=rand(3, seed=1))
    assert_matches_ort(model, rand(2, 3, 1, 1), rand(2, 3, 5, 7), rand(1, 3, 1, 4))
    group = textual("g (float[N,4,H,W] x) => (float y) { r = Reshape(x, g2) n = InstanceNormalization (r, ones, zeros)"
                    " s = Shape(x) y = Reshape(n, s) }", 17, g2=np.array([0, 4, -1], np.int64),
                    ones=np.ones(4, np.float32), zeros=np.zeros(4, np.float32))
    assert_matches_ort(group, rand(2, 4, 1, 1), rand(2, 4, 3, 2))


def test_resize_by_taps_on_a_dynamic_size_is_listed() -> None:
    """Source positions and weights are computed from static sizes: a spatial size known only at run time is
    refused at import (not a run-time error), with the mode named."""
    model = textual('g (float[N,4,H,W] x) => (float y) { y = Resize <mode="linear", coordinate_transformation_mode='
                    '"asymmetric"> (x, roi, scales) }', 18, roi=np.zeros(0, np.float32),
                    scales=np.array([1, 1, 2, 2], np.float32))
    with pytest.raises(UnsupportedOpError, match="linear with asymmetric coordinates on a dynamic size"):
        load_onnx(model)


@pytest.mark.parametrize("text, reason", [
    ("t = Transpose <perm=[2,3,0,1]> (x) y = GatherND <batch_dims=1> (t, i)", "batch_dims"),
    ("y = GatherND(x, i)", "unknown size"),  # indexes the batch dim
    ("t = Transpose <perm=[2,3,0,1]> (x) k = Cast <to=7> (t) j = Slice(k, s, e) y = GatherND(t, j)", "run time"),
])
def test_gather_nd_forms_it_cannot_express_are_listed(text: str, reason: str) -> None:
    model = textual(f"g (float[N,4,9,9] x) => (float y) {{ {text} }}", 17, i=np.zeros((2, 2), np.int64),
                    s=np.array([0], np.int64), e=np.array([2], np.int64))
    with pytest.raises(UnsupportedOpError, match=reason):
        load_onnx(model)


def test_pad_modes_along_dims_pytorch_cannot_pad_are_listed() -> None:
    # reflect / edge / wrap along the first dim of a feature map: F.pad would fail at run time
    text = 'g (float[N,4,9,9] x) => (float y) { a = Pad <mode="reflect"> (x, p) y = Hardmax(a) }'
    with pytest.raises(UnsupportedOpError) as info:
        load_onnx(textual(text, 17, p=np.array([1, 0, 0, 0, 0, 0, 0, 1], np.int64)))
    assert [n.op for n in info.value.nodes] == ["Pad", "Hardmax"]
    assert "Pad_0 (Pad): mode=reflect padding dim 0 of a rank-4 input (PyTorch pads in this mode only along the " \
           "last 3 dims, after at least one other)" in str(info.value)


@pytest.mark.parametrize("index", [np.int64(-1), np.array([-1, 0, -2], np.int64),
                                   np.array([[-1, 0], [1, -3]], np.int64)], ids=["scalar", "vector", "matrix"])
def test_constant_negative_gather_indices_on_a_dynamic_dim_count_from_its_end(index) -> None:
    """``x[:, -1]`` of a sequence exported with a dynamic length T: the index counts from the end of whatever T the
    input has (it was refused: "needs a static dimension")."""
    model = textual("g (float[N,T,4] x) => (float y) { y = Gather <axis=1> (x, i) }", 17, i=index)
    gm = load_onnx(model)
    for steps in (3, 5):
        x = rand(2, steps, 4, seed=steps)
        np.testing.assert_allclose(run_gm(gm, x)[0], run_ort(model, x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("pads", [[0, 2, 0, -1], [0, 3, 0, 0]], ids=["negative", "wider-than-the-dim"])
def test_wrap_pads_pytorch_cannot_express_are_listed(pads) -> None:
    """Found by fuzzing: F.pad(mode="circular") gave other values than onnxruntime for a negative wrap pad, and fails
    at run time for one wider than the dim; both are refused when importing."""
    with pytest.raises(UnsupportedOpError, match="mode=wrap with negative pads or pads wider than the dim"):
        load_onnx(textual('g (float[N,2] x) => (float y) { y = Pad <mode="wrap"> (x, p) }', 19,
                          p=np.array(pads, np.int64)))


def _assert_one_line(exc: pytest.ExceptionInfo) -> None:
    message = str(exc.value)
    assert message and "\n" not in message


def test_random_bytes_file(tmp_path) -> None:
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(OnnxImportError) as info:
        load_onnx(path)
    _assert_one_line(info)


def test_truncated_file(tmp_path) -> None:
    model = textual("g (float[N,4,9,9] x) => (float y) { y = Conv(x, w) }", 17, w=rand(8, 4, 3, 3))
    data = model.SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxImportError) as info:
        load_onnx(path)
    _assert_one_line(info)
    assert info.value.__cause__ is not None


def test_model_failing_the_checker(tmp_path) -> None:
    model = textual("g (float[N,4] x) => (float[N,4] y) { y = Add(x, missing) }", 17)
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    with pytest.raises(OnnxImportError, match="checker.*missing") as info:
        load_onnx(path)
    _assert_one_line(info)
    assert isinstance(info.value.__cause__, onnx.checker.ValidationError)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(OnnxImportError, match="not found"):
        load_onnx(tmp_path / "absent.onnx")


_OLD_OPSET_CNN = """<ir_version: 7, opset_import: ["" : {opset}]>
g (float[N,3,8,8] x) => (float[N,4,8,8] y) {{
    c = Conv <pads=[1,1,1,1]> (x, w, b) n = BatchNormalization (c, s, bb, m, v) r = Relu(n)
    u = {upsample} p = MaxPool <kernel_shape=[2,2], strides=[2,2]> (u)
    y = Softmax <axis=1> (p)
}}"""


@pytest.mark.parametrize("opset", [7, 9, MIN_OPSET - 1, MAX_OPSET + 1, MAX_OPSET + 3])
def test_opset_outside_the_range_is_converted(opset: int, caplog) -> None:
    """Files at older opsets (the ONNX Model Zoo's CNNs are opset 7-12) and newer ones are converted to the nearest
    opset the importer reads with onnx.version_converter, with a warning, and compute what onnxruntime computes on the
    original file: Softmax before opset 13 normalises over all dims from its axis on (converted to a reshape around
    the new Softmax), Upsample (until opset 9; its scales an attribute in opset 7) becomes Resize."""
    old = opset < MIN_OPSET
    upsample = {7: 'Upsample <mode="nearest", scales=[1.0, 1.0, 2.0, 2.0]> (r)', 9: 'Upsample <mode="nearest"> (r, up)'}
    resize = 'Resize <mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"> (r, roi, up)'
    text = _OLD_OPSET_CNN.format(opset=opset, upsample=upsample.get(opset, resize))  # (Upsample: until opset 9)
    model = onnx.parser.parse_model(text)
    inits = {"w": rand(4, 3, 3, 3), "b": rand(4), "s": rand(4), "bb": rand(4), "m": rand(4),
             "v": np.abs(rand(4)) + 1, "up": np.array([1, 1, 2, 2], np.float32), "roi": np.zeros(0, np.float32)}
    for name, array in inits.items():
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    with caplog.at_level("WARNING", logger="snnconvert.convert.onnx_model"):
        gm = assert_matches_ort(model, rand(2, 3, 8, 8))
    assert gm.meta["onnx"]["opset"] == (MIN_OPSET if old else MAX_OPSET)
    assert gm.meta["onnx"]["opset_converted_from"] == opset
    assert any(f"opset {opset} converted to opset" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("op,opset,scales", [
    ("Upsample", 7, (2.0, 2.0)), ("Upsample", 9, (2.0, 2.0)), ("Upsample", 9, (1.5, 3.0)),
    ("Resize", 10, (2.0, 1.5)), ("Resize", 10, (0.5, 0.5)), ("Resize", 10, (1.0, 0.5)),
])
def test_old_upsample_and_resize_keep_their_sampling(op, opset, scales, mode) -> None:
    """Upsample (opset 7, 9) and Resize-10 sample at asymmetric coordinates; the version converter's Resize would
    take the Resize-11 defaults (half-pixel, round-prefer-floor): the conversion keeps the old sampling, as
    onnxruntime runs the original file (nearest: truncation when enlarging, rounding up when shrinking)."""
    full = [1.0, 1.0, *scales]
    attrs = f'mode="{mode}"' + (f", scales={full}" if opset == 7 else "")
    inputs = "x" if opset == 7 else "x, sc"
    model = onnx.parser.parse_model(f"""<ir_version: 4, opset_import: ["" : {opset}]>
g (float[N,2,6,8] x) => (float y) {{ y = {op} <{attrs}> ({inputs}) }}""")
    model.graph.output[0].type.tensor_type.ClearField("shape")
    model.graph.initializer.append(numpy_helper.from_array(np.array(full, np.float32), "sc"))
    assert_matches_ort(model, rand(2, 2, 6, 8), np.arange(96, dtype=np.float32).reshape(1, 2, 6, 8))


def test_old_nearest_resize_that_enlarges_and_shrinks_is_one_line() -> None:
    model = onnx.parser.parse_model("""<ir_version: 5, opset_import: ["" : 10]>
g (float[N,2,6,8] x) => (float y) { y = Resize <mode="nearest"> (x, sc) }""")
    model.graph.output[0].type.tensor_type.ClearField("shape")
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 1, 2, 0.5], np.float32), "sc"))
    with pytest.raises(OnnxImportError, match="enlarged and shrunk") as info:
        load_onnx(model)
    _assert_one_line(info)


def test_opset_the_converter_cannot_convert_is_one_line() -> None:
    """RMSNormalization has no version before opset 23: nothing to convert it to; one line saying to re-export."""
    model = textual("g (float[N,4] x) => (float y) { y = RMSNormalization (x, s) }", 23, s=rand(4))
    with pytest.raises(OnnxImportError, match="version_converter cannot convert it to opset 21") as info:
        load_onnx(model)
    _assert_one_line(info)
    assert f"re-export the model at an opset in {MIN_OPSET}-{MAX_OPSET}" in str(info.value)


def test_two_graph_inputs_are_named() -> None:
    model = textual("g (float[N,4] x, float[N,4] z) => (float y) { y = Add(x, z) }", 17)
    with pytest.raises(OnnxImportError, match="'z'") as info:
        load_onnx(model)
    _assert_one_line(info)


# --------------------------------------------------------------------------------------------------------------------
# Whole torchvision models, both exporters
# --------------------------------------------------------------------------------------------------------------------
def _random_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.num_features, generator=generator))
    return model.eval()


def _export(model: nn.Module, path, exporter: str) -> None:
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(model, (x,), str(path), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},))
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=int(exporter[2:]),
                              input_names=["x"], dynamic_axes={"x": {0: "batch"}})


MODEL_CASES = [
    pytest.param(name, exporter, marks=[pytest.mark.slow] if exporter == "dynamo" else [], id=f"{name}-{exporter}")
    for name in ("resnet18", "mobilenet_v2")
    for exporter in ("ts13", "ts17", "dynamo")
]


class _PermutedHead(nn.Module):
    """Conv -> GELU -> a Linear over channels (NHWC) -> back to NCHW -> global average -> LayerNorm2d -> Linear:
    ConvNeXt's tail. The pooled NCHW view has channels-last strides; torch's dynamo exporter writes the view as
    ``Gather`` of indices from ``Range(0, batch)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv, self.mix = nn.Conv2d(1, 4, 3), nn.Linear(4, 4)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 10)
        self.norm = torchvision.models.convnext.LayerNorm2d(4)

    def forward(self, x):
        h = self.mix(torch.nn.functional.gelu(self.conv(x)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.fc(torch.flatten(self.norm(self.pool(h)), 1))


def _dynamo_export_matching_ort(model: nn.Module, path) -> set[str]:
    """Export ``model`` (inputs ``[B, 1, 12, 12]``) with torch's dynamo exporter and a dynamic batch axis, check the
    imported graph against onnxruntime at batch sizes 3 and 6 (6 stands for a flattened ``[T*B, ...]`` input), and
    return the file's operator types."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(2, 1, 12, 12),), str(path), dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    gm = load_onnx(path)
    for batch in (3, 6):
        x = rand(batch, 1, 12, 12, seed=batch)
        (ours,), (ref,) = run_gm(gm, x), run_ort(str(path), x)
        np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL * float(np.abs(ref).max()))
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.slow
def test_dynamo_as_strided_with_a_dynamic_batch_converts(tmp_path) -> None:
    if not HAS_ONNXSCRIPT:
        pytest.skip("torch's dynamo ONNX exporter needs the onnxscript package")
    from snnconvert.convert import ConversionConfig, convert

    model, path = _PermutedHead().eval(), tmp_path / "head.onnx"
    assert "Range" in _dynamo_export_matching_ort(model, path)
    res = convert(path, forward_loop=[torch.rand(8, 1, 12, 12)],
                  config=ConversionConfig.for_coding("differential", timesteps=2))
    x = torch.rand(5, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(res.snn.ann_forward(x), model(x), rtol=1e-5, atol=1e-5)
        assert res.snn(x).shape == (2, 5, 10)


class _UnequalPool(nn.Module):
    """VGG's head in small: ``AdaptiveAvgPool2d(3)`` on a 5x5 map (windows of unequal size), which torch's dynamo
    exporter writes as ``GatherND`` of the windows' positions, ``Where`` masks and a sum."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv, self.pool, self.fc = nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(3), nn.Linear(4 * 9, 10)

    def forward(self, x):
        h = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(torch.flatten(self.pool(h), 1))


@pytest.mark.slow
def test_dynamo_adaptive_pool_over_unequal_windows_converts(tmp_path) -> None:
    if not HAS_ONNXSCRIPT:
        pytest.skip("torch's dynamo ONNX exporter needs the onnxscript package")
    from snnconvert.convert import ConversionConfig, convert

    model, path = _UnequalPool().eval(), tmp_path / "pool.onnx"
    assert {"GatherND", "Where"} <= _dynamo_export_matching_ort(model, path)
    res = convert(path, forward_loop=[torch.rand(16, 1, 12, 12)],
                  config=ConversionConfig.for_coding("differential", timesteps=16))
    x = torch.rand(5, 1, 12, 12)
    with torch.no_grad():
        ann = model(x)
        torch.testing.assert_close(res.snn.ann_forward(x), ann, rtol=1e-5, atol=1e-5)
        out = res.snn(x)
    err = [float((out[t] - ann).abs().mean() / ann.abs().mean()) for t in (0, 15)]
    assert err[1] < err[0] / 5, err


@pytest.mark.parametrize(("name", "exporter"), MODEL_CASES)
def test_torchvision_model_matches_onnxruntime(tmp_path, name: str, exporter: str) -> None:
    if exporter == "dynamo" and not HAS_ONNXSCRIPT:
        pytest.skip("torch's dynamo ONNX exporter needs the onnxscript package")
    path = tmp_path / f"{name}.onnx"
    _export(_random_model(name), path, exporter)
    gm = load_onnx(path)
    assert gm.meta["onnx"]["input_shape"] == [None, 3, 32, 32]
    # Batch 3 differs from the export's 2; batch 6 stands for a flattened [T*B, ...] input.
    for batch in (3, 6):
        x = rand(batch, 3, 32, 32, seed=batch)
        (ours,), (ref,) = run_gm(gm, x), run_ort(str(path), x)
        scale = float(np.abs(ref).max())
        np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL * scale)
    assert nn.Conv2d in module_types(gm) and nn.Linear in module_types(gm)


class _Upsampling(nn.Module):
    """A segmentation head's resampling: nearest x2 (nn.Upsample), bilinear back to the input size (its size from
    the input's shape), bicubic x2 with aligned corners."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.down, self.mix = nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x):
        h = torch.relu(self.down(x))
        a = self.mix(self.up(h))
        b = torch.nn.functional.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False)
        c = torch.nn.functional.interpolate(h, scale_factor=2, mode="bicubic", align_corners=True)
        return a + b + c


@pytest.mark.parametrize("exporter", ["ts13", "ts17", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_resampling_model_matches_onnxruntime_and_converts(tmp_path, exporter: str) -> None:
    if exporter == "dynamo" and not HAS_ONNXSCRIPT:
        pytest.skip("torch's dynamo ONNX exporter needs the onnxscript package")
    from snnconvert.convert import ConversionConfig, convert

    model, path = _Upsampling().eval(), tmp_path / "up.onnx"
    _export(model, path, exporter)
    assert "Resize" in {n.op_type for n in onnx.load(str(path)).graph.node}
    gm = load_onnx(path)
    for batch in (3, 6):
        x = rand(batch, 3, 32, 32, seed=batch)
        (ours,), (ref,) = run_gm(gm, x), run_ort(str(path), x)
        np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL * float(np.abs(ref).max()))
    res = convert(path, forward_loop=[torch.rand(4, 3, 32, 32)],
                  config=ConversionConfig.for_coding("differential", timesteps=2))
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        torch.testing.assert_close(res.snn.ann_forward(x), model(x), rtol=1e-4, atol=1e-5)
