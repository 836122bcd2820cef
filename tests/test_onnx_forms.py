"""ONNX files in the forms users hand in, beyond the exporters' dynamic-batch float32 default: static batch sizes
(both exporters' default without dynamic axes), fp16 bodies, layer names that clash with ``fx.GraphModule``
attributes, pooling windows in the end padding, ONNX's slice sentinels, PRelu / DepthToSpace / SpaceToDepth,
integer inputs, and every problem of a file reported at once. Each imported graph is checked against onnxruntime
(``test_onnx_import.assert_matches_ort``) or against the PyTorch module it was exported from.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from test_onnx_import import assert_matches_ort, module_types, rand, run_ort, textual
from torch import nn

from snnconvert.convert import ConversionConfig, convert
from snnconvert.convert.errors import ConfigError, OnnxImportError, UnsupportedOpError
from snnconvert.convert.onnx_import import load_onnx


class _ViewNet(nn.Module):
    """conv-relu, max-pool, ``x.view(x.size(0), -1)``, linear: a static-batch export writes the batch size into the
    Reshape's target."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        h = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(h.view(h.size(0), -1))


class _TokenNet(nn.Module):
    """A class token in front of the patch tokens (``token.expand(x.size(0), -1, -1)``, folded into a ``[b, 1, C]``
    constant by a static-batch export), a per-token linear layer and a mean over the tokens."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.embed, self.token, self.mix = nn.Conv2d(1, 8, 4, stride=4), nn.Parameter(torch.randn(1, 1, 8)), \
            nn.Linear(8, 8)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.token.expand(x.size(0), -1, -1), tokens], dim=1)
        return torch.relu(self.mix(h)).mean(1)


class _HeadsNet(nn.Module):
    """Merges the batch with a heads dim (``[B, C, L] -> [B * 2, C / 2, L]``), as ``nn.MultiheadAttention`` does: a
    static-batch export cannot be freed there."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(2)
        return h.reshape(h.size(0) * 2, 2, -1).sum(-1).reshape(h.size(0), 4)


def _export_static(model: nn.Module, path, exporter: str, batch: int = 1) -> None:
    x = torch.rand(batch, 1, 12, 12)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(path), dynamo=exporter == "dynamo", opset_version=17)


@pytest.mark.parametrize("exporter", ["ts", pytest.param("dynamo", marks=pytest.mark.slow)])
@pytest.mark.parametrize("net", [_ViewNet, _TokenNet])
def test_static_batch_export_runs_at_any_batch(tmp_path, caplog, exporter, net) -> None:
    model, path = net().eval(), tmp_path / "static.onnx"
    _export_static(model, path, exporter, batch=1 if net is _ViewNet else 2)
    with caplog.at_level(logging.WARNING, logger="snnconvert.convert.onnx_import"):
        gm = load_onnx(path)
    assert gm.meta["onnx"]["static_batch"] in (1, 2) and gm.meta["onnx"]["batch_freed"] is True
    assert gm.meta["onnx"]["input_shape"][0] is None
    assert any("static batch size" in r.getMessage() and "read it at run time" in r.getMessage()
               for r in caplog.records)
    for batch in (1, 3, 6):
        x = torch.rand(batch, 1, 12, 12)
        with torch.no_grad():
            torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)
    if net is _ViewNet:  # the SNN runs T*B images per call: the freed file converts
        calib = [torch.rand(8, 1, 12, 12)]
        result = convert(str(path), forward_loop=calib, config=ConversionConfig.for_coding("rate", timesteps=4),
                         example_inputs=calib[0][:1])
        assert result.snn(calib[0]).shape == (4, 8, 10)


def test_static_batch_left_in_a_merged_dim_is_one_line_with_advice(tmp_path) -> None:
    path = tmp_path / "heads.onnx"
    _export_static(_HeadsNet(), path, "ts")
    calib = [torch.rand(4, 1, 12, 12)]
    with pytest.raises(ConfigError) as info:
        convert(str(path), forward_loop=calib, example_inputs=calib[0][:1])
    text = str(info.value)
    assert "\n" not in text and "fixed batch size of 1" in text and "dynamic_axes" in text


def test_static_batch_reshape_reads_the_batch_from_its_input() -> None:
    model = textual("g (float[1,4,3] x) => (float y) { r = Reshape(x, s) y = Relu(r) }", 17,
                    s=np.array([1, 12], np.int64))
    gm = assert_matches_ort(model, rand(1, 4, 3))
    assert gm.meta["onnx"]["static_batch"] == 1
    x = torch.rand(3, 4, 3) - 0.5
    torch.testing.assert_close(gm(x), torch.relu(x.reshape(3, 12)))
    # a Reshape whose input does not lead with the batch keeps its target (here: the batch moved to dim 1)
    moved = textual("g (float[1,4,3] x) => (float y) { t = Transpose <perm=[1,0,2]> (x) y = Reshape(t, s) }", 17,
                    s=np.array([4, 3], np.int64))
    gm = load_onnx(moved)
    reshape = next(n for n in gm.graph.nodes if n.target is torch.reshape)
    assert reshape.args[1] == (4, 3)


def test_static_batch_merged_into_the_features_stays_static(caplog) -> None:
    # the dynamo exporter's as_strided after a global pool (ConvNeXt): a Reshape to [-1] takes the batch into the
    # features and constant indices pick one sample's: freed, it would run at batch 3 and give sample 0's answer
    text = ("g (float[1,4,3,3] x) => (float[1,4] y) { p = GlobalAveragePool(x) f = Reshape(p, flat)"
            " g = Gather <axis=0> (f, idx) y = Reshape(g, s) }")
    model = textual(text, 17, flat=np.array([-1], np.int64), idx=np.arange(4).reshape(1, 4, 1, 1),
                    s=np.array([1, 4], np.int64))
    with caplog.at_level(logging.WARNING, logger="snnconvert.convert.onnx_import"):
        gm = assert_matches_ort(model, rand(1, 4, 3, 3))
    assert gm.meta["onnx"]["static_batch"] == 1 and gm.meta["onnx"]["batch_freed"] is False
    assert any("takes batches of 1 only" in r.getMessage() for r in caplog.records)
    with pytest.raises(RuntimeError):
        gm(torch.rand(3, 4, 3, 3))  # an error, not sample 0's answer three times


@pytest.mark.parametrize(("text", "inits"), [
    ("g (float[1,4] x) => (float y) { y = Slice(x, st, en, ax) }",
     {"st": np.array([-2], np.int64), "en": np.array([2], np.int64), "ax": np.array([0], np.int64)}),
    ("g (float[1,2] x) => (float y) { y = Trilu <upper=0> (x, k) }", {"k": np.int64(-2)}),
], ids=["slice-of-the-batch", "trilu-two-rows-down"])
def test_static_batch_mixed_in_a_way_two_samples_do_not_show_stays_static(text, inits) -> None:
    """Graphs that treat the batch axis as data but keep two samples intact (x[-2:2] of the batch, a lower triangle
    two rows down): the freeing check runs three samples, so the batch stays static (found by fuzzing against
    onnxruntime; with two samples both were freed and computed other samples' values at batch 3)."""
    gm = load_onnx(textual(text, 14, **inits))
    assert gm.meta["onnx"]["static_batch"] == 1 and gm.meta["onnx"]["batch_freed"] is False


def test_static_batch_resize_to_constant_sizes_runs_at_any_batch() -> None:
    # torch's dynamo exporter writes F.interpolate(x, size=(8, 10)) with sizes [batch, C, 8, 10] as a constant
    model = textual('g (float[2,3,4,5] x) => (float[2,3,8,10] y) { y = Resize <mode="linear"> (x, , , sz) }', 17,
                    sz=np.array([2, 3, 8, 10], np.int64))
    gm = assert_matches_ort(model, rand(2, 3, 4, 5))
    assert gm.meta["onnx"]["batch_freed"] is True
    assert gm(torch.rand(3, 3, 4, 5)).shape == (3, 3, 8, 10)


def test_static_batch_a_converter_needs_is_kept_and_every_problem_listed(caplog) -> None:
    # GatherND picking a sample: refused with a dynamic batch (indexed dim of unknown size), fine at the file's
    with caplog.at_level(logging.WARNING, logger="snnconvert.convert.onnx_import"):
        gm = assert_matches_ort(textual("g (float[2,3,4] x) => (float[1,4] y) { y = GatherND(x, i) }", 17,
                                        i=np.array([[1, 2]], np.int64)), rand(2, 3, 4))
    assert gm.meta["onnx"]["static_batch"] == 2 and gm.meta["onnx"]["batch_freed"] is False
    assert any("takes batches of 2 only" in r.getMessage() for r in caplog.records)
    # at the file's batch too, an unknown op and a refused one are listed at once (the GatherND is not: it imports)
    text = ('g (float[2,3,4,5] x) => (float y) { a = Pad <mode="reflect"> (x, p) h = Hardmax(a) y = GatherND(h, i) }')
    with pytest.raises(UnsupportedOpError) as info:
        load_onnx(textual(text, 17, p=np.array([1, 0, 0, 0, 1, 0, 0, 0], np.int64), i=np.array([[1, 2]], np.int64)))
    assert [n.op for n in info.value.nodes] == ["Pad", "Hardmax"]
    assert "mode=reflect padding dim 0" in str(info.value)


@pytest.mark.parametrize("text", [
    "y = Greater(x, h)",  # a boolean output
    "s = Sub(x, h) y = Log(s)",  # NaN for part of the check's random input
])
def test_static_batch_check_compares_boolean_and_nan_outputs(text) -> None:
    model = textual(f"g (float[2,3] x) => (y) {{ {text} }}", 17, h=np.float32(0.5))
    gm = load_onnx(model)
    assert gm.meta["onnx"]["batch_freed"] is True
    x = np.random.default_rng(0).random((2, 3), dtype=np.float32)
    (ref,) = run_ort(model, x)
    with torch.no_grad():
        ours = gm(torch.from_numpy(x)).numpy()
    assert ours.dtype == ref.dtype
    np.testing.assert_array_equal(ours, ref)


def _fp16_body() -> onnx.ModelProto:
    """fp32 input and output, an fp16 body between Casts (onnxconverter-common's ``keep_io_types=True``)."""
    return textual("g (float[N,3,8,8] x) => (float y) { h = Cast <to=10> (x) c = Conv <pads=[1,1,1,1]> (h, w, b)"
                   " r = Relu(c) y = Cast <to=1> (r) }", 17,
                   w=rand(4, 3, 3, 3).astype(np.float16), b=rand(4).astype(np.float16))


def test_fp16_body_imports_in_float32() -> None:
    model = _fp16_body()
    gm = load_onnx(model)
    x = rand(2, 3, 8, 8)
    (ref,) = run_ort(model, x)
    with torch.no_grad():
        ours = gm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=2e-3, atol=2e-3 * float(np.abs(ref).max()))
    assert all(p.dtype == torch.float32 for p in gm.parameters())
    assert "to" not in [n.target for n in gm.graph.nodes if n.op == "call_method"]  # float-to-float casts: no-ops


def test_fp16_graph_declares_its_input_type() -> None:
    model = textual("g (float16[N,3,8,8] x) => (float16 y) { y = Conv (x, w) }", 17,
                    w=rand(4, 3, 3, 3).astype(np.float16))
    gm = load_onnx(model)
    assert gm.meta["onnx"]["input_dtype"] == "float16"
    x = rand(2, 3, 8, 8)
    (ref,) = run_ort(model, x.astype(np.float16))
    with torch.no_grad():
        ours = gm(torch.from_numpy(x)).numpy()  # computed in float32: closer to the exact result than fp16
    np.testing.assert_allclose(ours, ref.astype(np.float32), rtol=1e-2, atol=1e-2 * float(np.abs(ref).max()))


def test_integer_input_is_refused_by_the_conversion() -> None:
    model = textual("g (uint8[N,1,8,8] x) => (float y) { f = Cast <to=1> (x) s = Sub(f, c) r = Relu(s)"
                    " y = GlobalAveragePool(r) }", 17, c=np.float32(128))
    gm = load_onnx(model)  # importable: the module itself takes uint8 images
    assert gm.meta["onnx"]["input_dtype"] == "uint8"
    calib = [torch.rand(4, 1, 8, 8)]
    with pytest.raises(ConfigError) as info:
        convert(gm, forward_loop=calib)
    assert "is uint8" in str(info.value) and "float32 input" in str(info.value)


@pytest.mark.parametrize("name", ["training", "meta", "_graph", "forward", "code"])
def test_node_names_that_are_graph_module_attributes(name: str) -> None:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", name + "_w"], ["c"], name=name), helper.make_node("Relu", ["c"], [name])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(rand(3, 2, 3, 3), name + "_w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = onnx.shape_inference.infer_shapes(model)
    gm = assert_matches_ort(model, rand(2, 2, 5, 5))
    assert isinstance(gm.meta, dict) and gm.training is False


@pytest.mark.parametrize("name", ["class", "lambda", "None", "self", "torch"])
def test_input_names_that_are_python_keywords_or_globals(name: str) -> None:
    # forward's parameter is named after the input: a keyword is a syntax error, "self" a second self, "torch"
    # hides the module from torch.flatten
    graph = helper.make_graph([helper.make_node("Relu", [name], ["r"]), helper.make_node("Flatten", ["r"], ["y"])],
                              "g", [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])])
    gm = assert_matches_ort(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), rand(2, 2, 3))
    assert gm.meta["onnx"]["input_name"] == name


def test_torch_submodule_named_meta_exports_and_imports(tmp_path) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.meta = nn.Conv2d(1, 4, 3), nn.Linear(4 * 4 * 4, 3)

        def forward(self, x):
            return self.meta(torch.relu(self.body(x)).flatten(1))

    model, path = Net().eval(), tmp_path / "meta.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(2, 1, 6, 6),), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "b"}})
    x = torch.rand(3, 1, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(load_onnx(path)(x), model(x))


@pytest.mark.parametrize(("op", "attrs"), [
    ("AveragePool", "count_include_pad=1"),
    ("MaxPool", ""),
])
@pytest.mark.parametrize(("size", "kernel", "pads"), [
    (5, 3, "0,0,2,2"),  # asymmetric: torch's ceil rule on the padded input would add a window in the end padding
    (6, 3, "2,2,2,2"),  # pads wider than half the kernel: explicit padding too
    (7, 2, "0,0,1,1"),
])
def test_ceil_mode_pool_with_explicit_pads_drops_windows_in_the_end_padding(op, attrs, size, kernel, pads) -> None:
    extra = f", {attrs}" if attrs else ""
    text = (f"g (float[N,3,{size},{size}] x) => (float y) {{ y = {op} <kernel_shape=[{kernel},{kernel}], "
            f"strides=[{kernel},{kernel}], pads=[{pads}], ceil_mode=1{extra}> (x) }}")
    assert_matches_ort(textual(text, 19), rand(2, 3, size, size))


@pytest.mark.parametrize("layer", [
    'Conv <kernel_shape=[3,3], strides=[2,2], auto_pad="SAME_UPPER"> (x, w, b)',
    'Conv <kernel_shape=[3,2], strides=[2,3], auto_pad="SAME_LOWER"> (x, w, b)',  # (onnxruntime: no dilations)
    'MaxPool <kernel_shape=[3,3], strides=[2,2], auto_pad="SAME_UPPER"> (x)',
    'AveragePool <kernel_shape=[3,3], strides=[3,2], auto_pad="SAME_LOWER", count_include_pad=1> (x)',
])
def test_same_padding_on_run_time_sizes_is_computed_at_run_time(layer: str) -> None:
    """tf2onnx writes a Keras model without fixed input sizes with ``auto_pad=SAME_*``: with a stride > 1 the pads
    depend on the size modulo the stride (refused before); now computed at run time, right at every size."""
    model = textual(f"g (float[N,3,H,W] x) => (float y) {{ y = {layer} }}", 17, w=rand(4, 3, 3, 2 if "[3,2]" in layer
                                                                                        else 3), b=rand(4))
    assert_matches_ort(model, *[rand(2, 3, h, w, seed=h) for h, w in ((7, 8), (8, 7), (1, 2), (12, 13))])


@pytest.mark.parametrize("kernel, attrs", [([3, 3], 'strides=[2,2], auto_pad="SAME_UPPER"'),
                                           ([4, 3], 'strides=[2,2], auto_pad="SAME_LOWER"'),
                                           ([2, 2], 'strides=[3,3], auto_pad="SAME_UPPER"')])
def test_transposed_same_padding_on_run_time_sizes(kernel: list, attrs: str) -> None:
    """A transposed convolution's SAME pads (output = input x stride) do not depend on the input size: a Keras
    Conv2DTranspose without fixed sizes imports (refused before). A kernel shorter than the stride leaves the full
    output short of input x stride: the spec asks for input x stride, and TF (where such files come from) adds the
    missing rows and columns at the end, reached by no input (the bias); onnxruntime keeps the shorter output, and
    onnx.reference adds them at the start."""
    bias = rand(4)
    model = textual(f"g (float[N,3,H,W] x) => (float y) {{ y = ConvTranspose <kernel_shape={kernel}, {attrs}> "
                    "(x, w, b) }", 17, w=rand(3, 4, *kernel), b=bias)
    inputs = [rand(2, 3, h, w, seed=h) for h, w in ((5, 6), (4, 7), (1, 1))]
    if kernel[0] >= 3:
        assert_matches_ort(model, *inputs)
        return
    gm = load_onnx(model)
    for x in inputs:
        (short,) = run_ort(model, x)
        got = gm(torch.from_numpy(x)).detach().numpy()
        assert got.shape[2:] == (3 * x.shape[2], 3 * x.shape[3])
        np.testing.assert_allclose(got[:, :, :short.shape[2], :short.shape[3]], short, rtol=1e-5, atol=1e-5)
        extra = np.concatenate([got[:, :, short.shape[2]:].reshape(2, 4, -1),
                                got[:, :, :, short.shape[3]:].reshape(2, 4, -1)], axis=2)
        np.testing.assert_allclose(extra, np.broadcast_to(bias[None, :, None], extra.shape), rtol=1e-6)


@pytest.mark.parametrize(("layer", "reason"), [
    ('AveragePool <kernel_shape=[3,3], strides=[2,2], auto_pad="SAME_UPPER"> (x)', "on a dynamic spatial size"),
    ('MaxPool <kernel_shape=[3,3], strides=[2,2], auto_pad="SAME_UPPER", ceil_mode=1> (x)', "ceil_mode=1"),
])
def test_same_padding_forms_not_computed_at_run_time_are_listed(layer: str, reason: str) -> None:
    """TF's average pooling (pads not counted) would need a per-window count of run-time sizes."""
    with pytest.raises(UnsupportedOpError, match=reason):
        load_onnx(textual(f"g (float[N,3,H,W] x) => (float y) {{ y = {layer} }}", 17))


def test_slice_sentinels_past_the_axis_are_empty() -> None:
    big = np.array([2**31 - 1], np.int64)
    text = ("g (float[N,4,6] x) => (float y) { a = Slice(x, s, e, ax) b = Slice(x, z, m, ax)"
            " y = Concat <axis=2> (a, b) }")
    model = textual(text, 17, s=big, e=np.array([2**62], np.int64), z=np.array([0], np.int64),
                    m=np.array([-2**62], np.int64), ax=np.array([-1], np.int64))
    gm = assert_matches_ort(model, rand(2, 4, 6))
    assert gm(torch.rand(2, 4, 6)).shape == (2, 4, 0)


@pytest.mark.parametrize(("text", "inits", "shape", "module"), [
    ('y = DepthToSpace <blocksize=2, mode="DCR"> (x)', {}, (2, 8, 3, 5), None),
    ('y = DepthToSpace <blocksize=2, mode="CRD"> (x)', {}, (2, 8, 3, 5), None),
    ("y = SpaceToDepth <blocksize=2> (x)", {}, (2, 8, 4, 6), None),
    ("y = PRelu(x, s)", {"s": rand(8, 1, 1)}, (2, 8, 3, 5), nn.PReLU),
    ("y = PRelu(x, s)", {"s": rand(1)}, (2, 8, 3, 5), nn.PReLU),
    # other slopes: a selection (one graded unit after conversion): along the last dim (Keras' PReLU on a channels-last
    # tensor), one per element, and of higher rank than the input (onnxruntime broadcasts; found by fuzzing)
    ("y = PRelu(x, s)", {"s": rand(5)}, (2, 8, 3, 5), None),
    ("y = PRelu(x, s)", {"s": rand(8, 3, 5)}, (2, 8, 3, 5), None),
    ("y = PRelu(x, s)", {"s": rand(1, 1, 1, 1, 1)}, (2, 8, 3, 5), None),
])
@pytest.mark.parametrize("dims", ["static", "dynamic"])
def test_rearranging_and_prelu_ops_match_onnxruntime(text, inits, shape, module, dims) -> None:
    n, c, h, w = shape
    declared = f"N,{c},{h},{w}" if dims == "static" else f"N,{c},H,W"
    gm = assert_matches_ort(textual(f"g (float[{declared}] x) => (float y) {{ {text} }}", 17, **inits), rand(*shape))
    if module is not None:
        assert module in module_types(gm)


@pytest.mark.parametrize(("act", "opset", "module"), [
    ("a = Selu(c)", 17, nn.SELU),
    ("a = Selu <alpha=1.5, gamma=2.0> (c)", 17, nn.ELU),
    ("a = Celu <alpha=0.7> (c)", 17, nn.CELU),
    ("a = Mish(c)", 18, nn.Mish),
    ('r = Relu(c) a = Einsum <equation="bchw,dc->bdhw"> (r, e)', 17, None),
    ("r = Relu(c) a = LRN <size=3, alpha=0.5, beta=0.75, bias=2.0> (r)", 17, nn.LocalResponseNorm),  # AlexNet's
    # the dynamo exporter's Softplus(beta, threshold): the selection becomes one piecewise function of c
    ("b = Mul(c, two) g = Greater(b, t) s = Softplus(b) h = Div(s, two) a = Where(g, c, h)", 18, None),
])
def test_more_activations_and_einsum_match_onnxruntime_and_convert(act, opset, module) -> None:
    """Selu, Celu, Mish (graded units, as on the torch.fx path) and Einsum with a constant operand (a matrix product,
    linear) were refused by the importer although the modules they come from convert."""
    model = textual(f"g (float[N,4,H,W] x) => (float y) {{ c = Conv(x, k) {act} y = Conv(a, k2) }}", opset,
                    k=rand(4, 4, 1, 1), e=rand(4, 4), k2=rand(3, 4, 1, 1), two=np.array(2.0, np.float32),
                    t=np.array(1.0, np.float32))
    gm = assert_matches_ort(model, rand(2, 4, 3, 5))
    if module is not None:
        assert module in module_types(gm)
    x = torch.randn(4, 4, 3, 5)
    res = convert(gm, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=16))
    with torch.no_grad():
        ann, out = gm(x), res.snn(x)
    assert float((out[-1] - ann).abs().max()) < float((out[0] - ann).abs().max())


def test_a_scalar_constant_expanded_to_a_runtime_shape() -> None:
    """torch's dynamo exporter writes ``torch.full_like(z, 0.5)`` as ``Expand(0-d constant, Shape(z))``: the
    imported graph called ``0.5.expand(...)`` (the constant was inlined as a Python float)."""
    text = "g (float[N,4,H,W] x) => (float y) { s = Shape(x) f = Expand(c, s) y = Add(x, f) }"
    gm = assert_matches_ort(textual(text, 18, c=np.array(0.5, np.float32)), rand(2, 4, 3, 5))
    assert gm(torch.zeros(3, 4, 2, 2)).eq(0.5).all()


def test_lrn_with_an_even_size_is_listed() -> None:
    with pytest.raises(UnsupportedOpError, match="an even size"):
        load_onnx(textual("g (float[N,8,3,5] x) => (float y) { y = LRN <size=4> (x) }", 17))


def test_prelu_slope_that_does_not_broadcast_is_listed() -> None:
    with pytest.raises(UnsupportedOpError) as info:
        load_onnx(textual("g (float[N,8,3,5] x) => (float y) { y = PRelu(x, s) }", 17, s=rand(4)))
    assert [n.op for n in info.value.nodes] == ["PRelu"] and "does not broadcast" in str(info.value)


def test_every_problem_is_listed_once_even_downstream_of_another() -> None:
    v = np.abs(rand(3)) + 0.5
    text = """g (float[N,3,8,8] x) => (float y) {
        a, m1, v1 = BatchNormalization <training_mode=1> (x, s, b, mu, v)
        c, m2, v2 = BatchNormalization <training_mode=1> (a, s, b, mu, v)
        d = MaxPool <kernel_shape=[2,2], storage_order=1> (c)
        y = Relu(d)
    }"""
    with pytest.raises(UnsupportedOpError) as info:
        load_onnx(textual(text, 17, s=rand(3), b=rand(3), mu=rand(3), v=v))
    assert [n.op for n in info.value.nodes] == ["BatchNormalization", "BatchNormalization", "MaxPool"]


def test_an_import_error_does_not_hide_the_unsupported_nodes() -> None:
    text = ("g (float[N,3,H,W] x) => (float y) { a = Hardmax(x) m = ReduceMean <axes=[0,2,3], keepdims=0> (x)"
            " c = InstanceNormalization(x, m, b) y = Add(c, c) }")
    with pytest.raises(UnsupportedOpError) as info:
        load_onnx(textual(text, 17, b=rand(3)))
    assert [n.op for n in info.value.nodes] == ["Hardmax"]
    assert "Not importable either" in str(info.value) and "scale and bias must be constants" in str(info.value)


def test_global_max_pool_and_symmetric_clip_convert(tmp_path) -> None:
    # ONNX GlobalMaxPool and Clip[-1, 1] (Hardtanh): graded units, exact on decoded values
    text = ("g (float[N,1,8,8] x) => (float y) { c = Conv <pads=[1,1,1,1]> (x, w) k = Clip(c, lo, hi) r = Relu(k)"
            " d = Conv <pads=[1,1,1,1]> (r, w2) e = Relu(d) p = GlobalMaxPool(e) f = Flatten(p)"
            " y = Gemm <transB=1> (f, w3) }")
    model = textual(text, 17, w=rand(4, 1, 3, 3), lo=np.float32(-1), hi=np.float32(1), w2=rand(4, 4, 3, 3, seed=1),
                    w3=rand(3, 4, seed=2))
    path = tmp_path / "gmp.onnx"
    onnx.save(model, str(path))
    ann = load_onnx(path)
    calib = [torch.rand(32, 1, 8, 8)]
    result = convert(str(path), forward_loop=calib, config=ConversionConfig.for_coding("differential", timesteps=16))
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        out, want = result.snn(x)[-1], ann(x)
    assert float((out - want).abs().max()) < 0.05 * float(want.abs().max())


def test_upper_case_onnx_suffix_is_a_file(tmp_path) -> None:
    path = tmp_path / "MODEL.ONNX"
    onnx.save(_fp16_body(), str(path))
    result = convert(str(path), forward_loop=[torch.rand(4, 3, 8, 8)])
    assert result.source.kind == "onnx"


def _shapeless_io(shapeless: str) -> onnx.ModelProto:
    """conv-relu whose input or output is declared as a float tensor without a shape (the ONNX IR allows it)."""
    model = textual("g (float[N,3,8,8] x) => (float[N,4,8,8] y) { c = Conv <pads=[1,1,1,1]> (x, w) y = Relu(c) }",
                    17, w=rand(4, 3, 3, 3))
    (info,) = model.graph.output if shapeless == "output" else model.graph.input
    info.type.tensor_type.ClearField("shape")
    return model


def test_output_declared_without_a_shape_is_checked_with_the_inferred_one(caplog) -> None:
    model = _shapeless_io("output")
    with pytest.raises(onnx.checker.ValidationError, match="shape"):
        onnx.checker.check_model(model)  # the checker's own rule, stricter than the IR (onnx/onnx#2932)
    with caplog.at_level(logging.INFO, logger="snnconvert.convert.onnx_model"):
        assert_matches_ort(model, rand(2, 3, 8, 8))
    assert "output(s) y declare no shape" in caplog.text


def test_input_declared_without_a_shape_is_one_line() -> None:
    with pytest.raises(OnnxImportError, match=r"graph input 'x' declares no shape; .*export the model with an "
                                              r"example input"):
        load_onnx(_shapeless_io("input"))


def test_other_checker_failures_still_fail_with_a_shapeless_output() -> None:
    model = _shapeless_io("output")
    model.graph.node[0].input[1] = "nowhere"  # a dangling input: the checker's complaint stands
    with pytest.raises(OnnxImportError, match="fails the ONNX checker"):
        load_onnx(model)


@pytest.mark.parametrize("kind", ["causal", "bool", "bias", "windows"])
def test_exported_masked_attention_imports_and_converts(tmp_path, kind) -> None:
    """Masked attention as the exporter writes it out: a causal mask by Trilu, the NaN guard after a boolean mask's
    softmax (``Where(IsNaN(p), 0, p)``: ``nan_to_num``, a graded unit), additive -inf biases and per-window masks.
    The import matches onnxruntime; differential coding converges with no NaN (-inf in the softmax unit's bias)."""
    from test_model_patterns import MaskedAttention

    model, x = MaskedAttention(kind).eval(), torch.randn(6, 6, 8)
    path = tmp_path / f"{kind}.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    assert_matches_ort(onnx.load(str(path)), x.numpy(), x[:2].numpy())
    res = convert(str(path), [x], config=ConversionConfig.for_coding("differential", timesteps=16))
    with torch.no_grad():
        ann, out = model(x), res.snn(x)
    assert not torch.isnan(out).any()
    errors = [float((out[t] - ann).abs().mean() / ann.abs().mean()) for t in (0, 15)]
    assert errors[1] < min(0.1 * errors[0], 0.02), errors


def _assert_same_as_ort(model: onnx.ModelProto, x: np.ndarray) -> None:
    """Outputs equal to onnxruntime's, in value, shape and element type (integer results)."""
    gm = load_onnx(model)
    with torch.no_grad():
        out = gm(torch.from_numpy(x))
    for ours, ref in zip(out if isinstance(out, tuple) else (out,), run_ort(model, x), strict=True):
        assert ours.numpy().dtype == ref.dtype
        np.testing.assert_array_equal(ours.numpy(), ref)


def test_shape_value_gather_div_and_cast_match_onnxruntime() -> None:
    # a shape value picked with 2-d indices keeps their shape; integer Div truncates a negative shape value; a Cast to
    # int32 gives int32 (batch 1: -1 / 2 truncates to 0, floors to -1)
    text = ("g (float[N,3,4] x) => (int64 a, int64 b, int32 c) { s = Shape(x) a = Gather(s, i) n = Neg(s)"
            " b = Div(n, two) c = Cast <to=6> (s) }")
    model = textual(text, 17, i=np.array([[0, 1], [2, 0]], np.int64), two=np.int64(2))
    _assert_same_as_ort(model, rand(1, 3, 4))


def test_integer_reductions_and_powers_keep_the_integer_type() -> None:
    # ReduceMean of integers truncates the mean; an integer base to a float exponent stays integer (truncated);
    # ReduceSum of int32 stays int32
    text = ("g (int64[N,2] x) => (int64 m, int64 p, int32 s) { m = ReduceMean <axes=[1], keepdims=0> (x)"
            " a = Abs(x) p = Pow(a, e) c = Cast <to=6> (x) s = ReduceSum <keepdims=0> (c, ax) }")
    model = textual(text, 17, e=np.float32(0.5), ax=np.array([0], np.int64))
    _assert_same_as_ort(model, np.array([[1, 2], [4, -7], [10, 3]], np.int64))


def test_instance_norm_over_one_element_converts() -> None:
    # after a global pool every value is its own mean: the node gives its bias (affine in x), and converts
    text = ("g (float[N,1,8,8] x) => (float y) { c = Conv <pads=[1,1,1,1]> (x, w) r = Relu(c) p = GlobalAveragePool(r)"
            " n = InstanceNormalization (p, s, b) f = Flatten(n) y = Gemm <transB=1> (f, w2) }")
    model = textual(text, 17, w=rand(4, 1, 3, 3), s=rand(4), b=rand(4, seed=1), w2=rand(3, 4, seed=2))
    gm = assert_matches_ort(model, rand(2, 1, 8, 8))
    x = torch.rand(8, 1, 8, 8)
    res = convert(gm, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=4))
    with torch.no_grad():
        torch.testing.assert_close(res.snn(x)[-1], gm(x), rtol=1e-4, atol=1e-5)


def test_fuzzed_resize_pooling_and_run_time_same_pads_agree_with_onnxruntime() -> None:
    """``bench/onnx_fuzz.py`` at a small size: random Resize, pooling and run-time SAME-padding nodes import and match
    onnxruntime (or the spec where onnxruntime departs from it); nothing differs."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("onnx_fuzz", Path(__file__).parents[1] / "bench" / "onnx_fuzz.py")
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    for family in ("resize", "pool", "same"):
        findings: list[str] = []
        counts = fuzz.run_family(family, 150, seed=11, log=findings.append)
        assert counts["differs"] == 0, findings
        assert counts["equal"] >= 60, (family, counts)


def test_normalize_and_logsumexp_as_torch_exports_them_import_and_convert() -> None:
    """``F.normalize`` exports as ReduceL2 / Clip / Expand / Div and ``torch.logsumexp`` as ReduceLogSumExp (neither
    was read before): both match onnxruntime and the converted network converges to the imported one."""
    import io

    import onnx

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 5)

        def forward(self, x):
            h = torch.relu(self.conv(x)).mean((2, 3))
            return self.fc(torch.nn.functional.normalize(h, dim=1)) + torch.logsumexp(h, dim=1, keepdim=True)

    buffer = io.BytesIO()
    torch.manual_seed(0)
    torch.onnx.export(Head().eval(), (torch.rand(2, 3, 8, 8),), buffer, dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    model = onnx.load_from_string(buffer.getvalue())
    assert {"ReduceL2", "ReduceLogSumExp"} <= {n.op_type for n in model.graph.node}
    gm = assert_matches_ort(model, rand(3, 3, 8, 8))
    x = torch.rand(16, 3, 8, 8)
    res = convert(gm, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=16))
    with torch.no_grad():
        ann, out = gm(x), res.snn(x)
    assert float((out[-1] - ann).abs().max()) < 0.05 * float((out[0] - ann).abs().max())


@pytest.mark.parametrize("opset", [9, 17])
def test_local_response_norm_as_torch_exports_it_imports_and_converts(opset: int) -> None:
    """torch writes ``nn.LocalResponseNorm`` as a pooling of squares across channels, and from opset 13 on with an
    ``If`` around a squeeze whose dim it could not size: the condition is known at import, the branch taken is
    imported in place; the file matches onnxruntime and converts (its Pow / Div of the input become graded units)."""
    import io

    import onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.LocalResponseNorm(5, alpha=0.1), nn.Conv2d(8, 4, 3)).eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.rand(2, 3, 9, 9),), buffer, dynamo=False, opset_version=opset, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    proto = onnx.load_from_string(buffer.getvalue())
    assert ("If" in {n.op_type for n in proto.graph.node}) == (opset >= 13)
    gm = assert_matches_ort(proto, 4 * rand(3, 3, 9, 9))
    x = torch.rand(16, 3, 9, 9)
    res = convert(gm, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=16))
    with torch.no_grad():
        ann, out = gm(x), res.snn(x)
    assert float((out[-1] - ann).abs().max()) < 0.05 * float((out[0] - ann).abs().max())


def test_if_on_the_input_and_inside_a_branch_are_listed() -> None:
    """An If whose condition depends on the input is data-dependent control flow: listed. A node of the branch
    taken that cannot be imported is listed itself (not the If around it)."""
    text = """g (float[N,4] x) => (float y) {
        s = ReduceSum <keepdims=0> (x) c = Greater(s, zero)
        a = If (c) < then_branch = g1 () => (float[N,4] t) { t = Relu(x) },
                     else_branch = g2 () => (float[N,4] e) { e = Neg(x) } >
        k = Constant <value = bool {1}> ()
        y = If (k) < then_branch = g3 () => (float[N,4] h) { h = Hardmax(a) },
                     else_branch = g4 () => (float[N,4] f) { f = Neg(a) } >
    }"""
    with pytest.raises(UnsupportedOpError) as info:
        load_onnx(textual(text, 17, zero=np.array(0.0, np.float32)))
    assert [n.op for n in info.value.nodes] == ["If", "Hardmax"]
    assert "condition computed at run time" in str(info.value)


def test_if_branch_with_its_own_initializer_is_imported() -> None:
    """A branch (a subgraph) may hold initializers of its own: read when its nodes are imported."""
    then_graph = helper.make_graph([helper.make_node("Add", ["x", "bias"], ["t"])], "then", [],
                                   [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 4])],
                                   initializer=[onnx.numpy_helper.from_array(rand(4), "bias")])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                                   [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 4])])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", TensorProto.BOOL, [], [True])),
         helper.make_node("If", ["k"], ["y"], then_branch=then_graph, else_branch=else_graph)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    gm = assert_matches_ort(model, rand(3, 4))
    assert "If" not in {n.meta.get("onnx", {}).get("op_type") for n in gm.graph.nodes if n.op != "placeholder"}
