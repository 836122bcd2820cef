"""Patterns of real model code (timm and friends) the front end and passes handle, each in a small hand-written
model: functional BatchNorm behind rank assertions, branches on shapes, extra forward arguments with defaults,
splitting / rolling / resampling ops, fused attention, unused metadata reads."""
from __future__ import annotations

import math
import operator
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import TOLERANCES

from snnconvert.convert import RATE_DEFAULT, ConversionConfig, convert
from snnconvert.convert.coding.units import GradedUnit
from snnconvert.convert.errors import ConfigError, TraceError, UnsupportedOpError
from snnconvert.convert.frontend import trace_module
from snnconvert.convert.passes import NORMALIZE_PASSES
from snnconvert.convert.passes.attention import masked_softmax
from snnconvert.convert.passes.normalize import BatchNormAnyRank
from snnconvert.convert.pipeline import ConversionReport, run_passes

TOL = TOLERANCES["pass_equivalence"]


def _passes(model, example=None):
    gm = trace_module(model, example)
    report = ConversionReport()
    return run_passes(gm, NORMALIZE_PASSES, RATE_DEFAULT, report), report


def _relative_errors(out: torch.Tensor, ann: torch.Tensor, steps: tuple[int, ...]) -> list[float]:
    """Mean |decoded SNN output - ANN output| / mean |ANN output| after each step index of ``steps``."""
    return [float((out[t] - ann).abs().mean() / ann.abs().mean()) for t in steps]


def _stats(bn: nn.Module) -> None:
    with torch.no_grad():
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        if bn.weight is not None:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)


class FunctionalBN(nn.Module):
    """timm's BatchNormAct2d: ``torch._assert(x.ndim == 4)`` then ``F.batch_norm`` on the module's own tensors."""

    def __init__(self, channels: int, affine: bool = True) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=affine)
        _stats(self.bn)

    def forward(self, x):
        torch._assert(x.ndim == 4, "expected 4D input")
        bn = self.bn
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.1, bn.eps)


class BNActNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), FunctionalBN(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), FunctionalBN(4, affine=False)
        self.fc, self.bn3 = nn.Linear(4 * 28 * 28, 6), nn.BatchNorm1d(6)
        _stats(self.bn3)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        y = self.fc(torch.flatten(x, 1))
        return F.batch_norm(y, self.bn3.running_mean, self.bn3.running_var, self.bn3.weight, self.bn3.bias,
                            training=False, eps=self.bn3.eps)


def test_functional_batch_norm_becomes_a_module_and_folds_past_rank_assertions():
    model = BNActNet().eval()
    gm, report = _passes(model)
    assert report.entry("functional_layers_to_modules").counts == {"F.batch_norm": 3}
    assert report.entry("fold_bn").counts == {"BatchNormAnyRank": 3}  # the assertions read shapes, not values
    assert not [n for n in gm.graph.nodes if n.target is F.batch_norm]
    assert not [m for m in gm.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    x = torch.rand(5, 1, 28, 28)
    torch.testing.assert_close(gm(x), model(x), **TOL)


def test_batch_norm_with_batch_statistics_is_listed():
    class TrainBN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return F.relu(F.batch_norm(self.conv(x), None, None, training=True))

    with pytest.raises(UnsupportedOpError, match="batch_norm"):
        convert(TrainBN(), forward_loop=[torch.rand(4, 1, 8, 8)])


def test_batch_norm_any_rank_checks_rank_two():
    bn = BatchNormAnyRank(3).eval()
    assert bn(torch.rand(2, 3)).shape == (2, 3) and bn(torch.rand(2, 3, 4, 5, 6)).shape == (2, 3, 4, 5, 6)
    with pytest.raises(ValueError, match="rank >= 2"):
        bn(torch.rand(3))


class ShapeBranchNet(nn.Module):
    """timm's VGG head: pool up to a minimum size when the feature map is smaller (a branch on shapes)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3)
        self.fc = nn.Linear(4 * 5 * 5, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        if x.shape[-2] < 7 or x.shape[-1] < 7:
            x = F.adaptive_avg_pool2d(x, (max(7, x.shape[-2]), max(7, x.shape[-1])))
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 5), 1))


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_a_branch_on_shapes_follows_the_example_and_is_guarded(coding):
    model = ShapeBranchNet().eval()
    small, large = torch.rand(6, 1, 10, 10), torch.rand(6, 1, 28, 28)  # 5x5 after the pool: branch; 14x14: none
    for x in (small, large):
        res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=32),
                      example_inputs=x[:2])
        guards = [n for n in res.snn.gm.graph.nodes if n.target is torch._assert]
        assert guards, "the branch taken is guarded in the graph"
        res.snn(x[:3], 1)
        assert not res.snn.batch_folded  # its units' batch dim holds the images: one capture on one sample
        with torch.no_grad():
            torch.testing.assert_close(res.snn.ann_forward(x), model(x), **TOL)
            multi, single = res.snn(x, 4), res.snn(x, 4, mode="single")  # the guard holds at T*B and per step
            torch.testing.assert_close(single, multi, **TOLERANCES["single_vs_multi"])
            other = large if x is small else small
            with pytest.raises(ConfigError, match="traced for inputs of shape"):
                res.snn(other, 2)  # the branch would go the other way: loud, not a different network


def test_branches_without_example_or_on_values_are_trace_errors():
    with pytest.raises(TraceError, match="example input is given"):
        trace_module(ShapeBranchNet())

    class ValueBranch(nn.Module):
        def forward(self, x):
            return F.relu(x) if x.sum() > 0 else -x

    with pytest.raises(TraceError, match="branch on tensor values"):
        trace_module(ValueBranch(), torch.rand(1, 3))


class ExtraArgs(nn.Module):
    """timm's ViT blocks: ``forward(x, attn_mask=None, is_causal=False)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x, attn_mask=None, is_causal=False, *rest, **options):
        if attn_mask is not None or is_causal:
            x = x * 0
        return F.relu(self.fc(x))


def test_forward_arguments_with_defaults_are_fixed():
    model = ExtraArgs()
    gm = trace_module(model)
    assert [n.name for n in gm.graph.nodes if n.op == "placeholder"] == ["x"]
    assert not [n for n in gm.graph.nodes if n.target is torch._assert]  # fx's checks of the fixed values dropped
    x = torch.rand(3, 8)
    torch.testing.assert_close(gm(x), model(x), **TOL)

    class TwoInputs(nn.Module):
        def forward(self, x, y):
            return x + y

    with pytest.raises(TraceError, match=r"forward\(x, y\) takes more than one input"):
        trace_module(TwoInputs())


class PassesItsArguments(nn.Module):
    """Ultralytics' models: ``forward(self, x, *args, **kwargs)`` handing them on to ``predict(x, ...)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x, *args, **kwargs):
        return self.predict(x, *args, **kwargs)

    def predict(self, x, profile=False, *, scale=1.0):
        return F.relu(self.fc(x)) * scale * (0 if profile else 1)


def test_forward_passing_on_args_and_kwargs_traces_with_them_empty():
    model = PassesItsArguments()
    gm = trace_module(model)
    assert [n.name for n in gm.graph.nodes if n.op == "placeholder"] == ["x"]
    x = torch.rand(3, 8)
    torch.testing.assert_close(gm(x), model(x), **TOL)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=4))
    assert len(list(res.snn.neurons())) == 1


class Rearranging(nn.Module):
    """Splitting, moving and resampling ops between ReLUs (MixConv/Res2Net split, qkv unbind, Swin roll, HRNet
    upsampling, pixel shuffle), and an unused device read (LeViT)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.mix = nn.Conv2d(4, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.shuffle = nn.PixelShuffle(2)
        self.head = nn.Linear(2 * 56 * 56 + 2 * 28 * 28 + 4 * 14 * 14, 10)

    def forward(self, x):
        x.device  # noqa: B018 - an unused metadata read, as LeViT's attention-bias cache makes
        x = F.relu(self.conv(x))  # [B, 8, 28, 28]
        a, b = torch.split(x, 4, dim=1)
        a = torch.roll(torch.flip(F.relu(self.mix(a)), dims=[-1]), shifts=3, dims=-2)
        c0, c1 = torch.chunk(b, 2, dim=1)[0].unbind(1)  # two [B, 28, 28]
        up = F.relu(self.up(torch.stack([c0, c1], 1)))  # [B, 2, 56, 56]
        near = F.interpolate(a[:, :2], scale_factor=1, mode="nearest")  # [B, 2, 28, 28]
        shuffled = F.relu(self.shuffle(F.max_pool2d(a, 2)))  # [B, 4, 14, 14] -> [B, 1, 28, 28]
        shuffled = shuffled.repeat(1, 4, 1, 1)[:, :, :14, :14]  # [B, 4, 14, 14]
        return self.head(torch.cat([up.flatten(1), near.flatten(1), shuffled.flatten(1)], 1))


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_rearranging_ops_convert_exactly(coding):
    model = Rearranging().eval()
    x = torch.rand(8, 1, 28, 28)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=64),
                  example_inputs=x[:2])
    with torch.no_grad():
        ann = model(x)
        torch.testing.assert_close(res.snn.ann_forward(x), ann, **TOL)
        out = res.snn(x)
    err = _relative_errors(out, ann, (0, 63))
    assert err[1] < min(err[0], 0.05), err


class SDPA(nn.Module):
    """timm's fused attention: ``F.scaled_dot_product_attention(q, k, v)`` on heads from one qkv projection."""

    def __init__(self, mask: bool = False, scale: float | None = None) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.qkv, self.proj, self.heads = nn.Linear(8, 24), nn.Linear(8, 8), 2
        self.mask = torch.zeros(5, 5) if mask else None
        self.scale = scale

    def forward(self, x):  # x [B, 5, 8]
        B, N, C = x.shape
        q, k, v = self.qkv(F.relu(x)).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        kwargs = {} if self.scale is None else {"scale": self.scale}
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, dropout_p=0.0, **kwargs)
        return self.proj(a.transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("scale", [None, 0.3])
def test_fused_attention_is_written_out(scale):
    model = SDPA(scale=scale).eval()
    x = torch.randn(6, 5, 8)
    gm, report = _passes(model)
    assert report.entry("write_out_attention").counts == {"scaled_dot_product_attention": 1}
    assert not [n for n in gm.graph.nodes if n.target is F.scaled_dot_product_attention]
    assert len([n for n in gm.graph.nodes if n.target is operator.matmul]) == 2
    torch.testing.assert_close(gm(x), model(x), **TOL)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=4))
    kinds = res.report.entry("replace_activations").counts
    assert kinds.get("GradedUnit(matmul)") == 2 and kinds.get("GradedUnit(softmax)") == 1, kinds


class MaskedAttention(nn.Module):
    """Attention with the masks models use, on 6 tokens of 8 features: ``is_causal``; ``torch.ones(N, N).tril()``
    from traced sizes; a boolean buffer (True: attended), also expanded by the traced batch size and with a query
    that attends nowhere; a float buffer cast with ``type_as(q)`` / ``.to(q)``; a float relative-position bias with
    -inf entries built from a parameter and shapes; a mask per window expanded over the windows of every image
    (Swin); the boolean ``attn_mask`` of ``nn.MultiheadAttention`` (True: NOT attended); and a mask computed from
    the input values."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.kind, self.heads = kind, 2
        self.qkv, self.proj = nn.Linear(8, 24), nn.Linear(8, 8)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.table = nn.Parameter(torch.randn(2, 11))
        self.register_buffer("keep", (torch.rand(6, 6) > 0.4) | torch.eye(6, dtype=torch.bool))
        self.register_buffer("bias_buffer", torch.randn(6, 6))
        keep = torch.stack([self.keep[:3, :3], self.keep[3:, 3:]])  # [windows, 3, 3]
        # a parameter: torch.fx reads it as a graph node (a plain buffer would be a tensor that cannot take x.shape)
        self.windows = nn.Parameter(torch.zeros(2, 3, 3).masked_fill(~keep, -100.0), requires_grad=False)
        self.register_buffer("fixed", torch.rand(6 * 2, 6, 6) > 0.7)  # batch 6 × 2 heads; True: NOT attended

    def forward(self, x):  # x [B, 6, 8]
        B, N, C = x.shape
        h = F.relu(x)
        if self.kind == "mha":
            return self.proj(self.mha(h, h, h, attn_mask=~self.keep, need_weights=False)[0])
        if self.kind == "mha_heads":  # [B·H, L, S], a float mask per head (-inf: not attended) for every sample
            per_head = torch.stack([self.bias_buffer, self.bias_buffer.t()]).masked_fill(~self.keep, float("-inf"))
            mask = per_head[None].expand(B, -1, -1, -1).reshape(B * self.heads, N, N)
            return self.proj(self.mha(h, h, h, attn_mask=mask, need_weights=False)[0])
        if self.kind == "mha_fixed":  # [B·H, L, S] for one batch size only, a different mask per sample
            return self.proj(self.mha(h, h, h, attn_mask=self.fixed, need_weights=False)[0])
        q, k, v = self.qkv(h).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.kind == "causal":
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.kind == "tril":  # the causal mask as torch's docs build it, from traced sizes
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(N, N, dtype=torch.bool).tril())
        elif self.kind == "bool":
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=self.keep)
        elif self.kind == "expanded":  # a buffer expanded by the traced batch size
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=self.keep[None, None].expand(B, 1, N, N))
        elif self.kind == "dead_row":  # query 0 attends nowhere: the fused call answers 0 there
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=self.keep & (torch.arange(6) > 0)[:, None])
        elif self.kind == "type_as":  # a float buffer cast like the query (its dtype, not its values)
            bias = torch.zeros(6, 6).masked_fill(~self.keep, float("-inf"))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias_buffer.type_as(q) + bias.to(q))
        elif self.kind == "bias":
            idx = torch.arange(N, device=x.device)
            bias = self.table[:, idx[:, None] - idx[None, :] + 5].masked_fill(~self.keep, float("-inf"))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        elif self.kind == "windows":  # Swin: 2 windows of 3 tokens folded into the batch, a mask per window
            win = [t.reshape(B, self.heads, 2, 3, C // self.heads).transpose(1, 2).reshape(B * 2, self.heads, 3, -1)
                   for t in (q, k, v)]
            mask = self.windows.reshape(1, 2, 1, 3, 3).expand(B, -1, self.heads, -1, -1)
            a = F.scaled_dot_product_attention(*win, attn_mask=mask.reshape(B * 2, self.heads, 3, 3))
            a = a.reshape(B, 2, self.heads, 3, -1).transpose(1, 2).reshape(B, self.heads, N, -1)
        else:  # "input": attend where the key's features sum above zero
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=k.sum(-1, keepdim=True).transpose(-2, -1) > 0)
        return self.proj(a.transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("coding", ["rate", "differential"])
@pytest.mark.parametrize("kind", ["causal", "tril", "bool", "expanded", "dead_row", "type_as", "bias", "windows",
                                  "mha", "mha_heads"])
def test_attention_masks_are_applied_inside_the_softmax_unit(kind, coding):
    """A mask that does not depend on the input's values is computed once (a buffer) and applied to the decoded
    scores inside one graded unit (masked_softmax): -inf entries never enter a stream (where x_t − b would be NaN)."""
    model, x = MaskedAttention(kind).eval(), torch.randn(6, 6, 8)
    kind_name = "MultiheadAttention" if kind.startswith("mha") else "scaled_dot_product_attention"
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=32))
    assert res.report.entry("write_out_attention").counts == {kind_name: 1}
    (unit,) = [m.f for m in res.snn.gm.modules() if isinstance(m, GradedUnit) and m.f.target is masked_softmax]
    assert unit.kwargs.get("per_sample", False) == (kind in ("windows", "expanded"))  # repeated for every image
    torch.testing.assert_close(res.snn.ann_forward(x), model(x), **TOL)  # the written-out graph is the model
    with torch.no_grad():
        ann, out = model(x), res.snn(x)
    assert not torch.isnan(out).any()
    err = _relative_errors(out, ann, (0, 31))
    assert err[1] < min(err[0], 0.05), err


def test_attention_masks_computed_from_the_input_stay_fused_and_are_listed():
    with pytest.raises(UnsupportedOpError, match=r"scaled_dot_product_attention.*\(scaled_dot_product_attention "
                                                 r"with an attention mask computed from the input stays fused: fused "
                                                 r"attention is not convertible"):
        convert(MaskedAttention("input").eval(), forward_loop=[torch.randn(4, 6, 8)])
    with pytest.raises(UnsupportedOpError, match=r"MultiheadAttention with a 3-d attention mask for a fixed batch "
                                                 r"\(12 rows for 2 heads; build it from the batch size"):
        x = torch.randn(6, 6, 8)  # the model runs at batch 6 only
        convert(MaskedAttention("mha_fixed").eval(), forward_loop=[x], example_inputs=x)
    gm, report = _passes(SDPA(mask=True).eval())  # a constant mask: written out even without traced shapes
    assert report.entry("write_out_attention").counts == {"scaled_dot_product_attention": 1}


def test_a_guarded_network_pickles(tmp_path):
    x = torch.rand(4, 1, 10, 10)
    res = convert(ShapeBranchNet().eval(), forward_loop=[x], config=ConversionConfig.for_coding("differential"),
                  example_inputs=x[:1])
    torch.save(res.snn, tmp_path / "snn.pt")
    again = torch.load(tmp_path / "snn.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(again(x, 3), res.snn(x, 3))
        with pytest.raises(ConfigError, match="traced for inputs of shape"):
            again(torch.rand(2, 1, 28, 28), 1)
        with pytest.raises(ConfigError, match="traced for inputs of shape"):  # was a bare AssertionError
            again.ann_forward(torch.rand(2, 1, 28, 28))


def test_a_guarded_network_saves_and_reloads(tmp_path):
    from snnconvert.convert import ModelSource
    from snnconvert.runtime import load

    x = torch.rand(4, 1, 10, 10)
    res = convert(ShapeBranchNet().eval(), forward_loop=[x], config=ConversionConfig.for_coding("differential"),
                  example_inputs=x[:1], source=ModelSource.python(f"{__file__}:ShapeBranchNet"))
    # the `if` (taken) and the two comparisons inside max(7, ...) (7 is larger: False)
    assert res.report.input_shape == [1, 10, 10]
    assert [b.rsplit(": ", 1)[1] for b in res.report.shape_branches] == ["True", "False", "False"]
    assert all("test_model_patterns.py:" in b for b in res.report.shape_branches)
    again = load(res.save(tmp_path / "snn"))  # re-traced at the recorded input shape: the same branch
    with torch.no_grad():
        assert torch.equal(again(x), res.snn(x))
    # traced on 4 images (the CLI traces on 2), rebuilt on 1: the guards' messages differ, the graph does not (the
    # manifest's digest refused every such folder as "its code changed")
    res = convert(ShapeBranchNet().eval(), forward_loop=[x], config=ConversionConfig.for_coding("differential"),
                  example_inputs=x, source=ModelSource.python(f"{__file__}:ShapeBranchNet"))
    with torch.no_grad():
        assert torch.equal(load(res.save(tmp_path / "snn4"))(x), res.snn(x))


class Windows(nn.Module):
    """Swin's window partition: the windows of every image move into the batch dim ``[B·4, 49, C]`` around a
    LayerNorm, a Linear and a ReLU, then back; the units see more rows than images."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv, self.norm, self.fc = nn.Conv2d(1, 8, 2, stride=2), nn.LayerNorm(8), nn.Linear(8, 8)
        self.head = nn.Linear(8 * 14 * 14, 10)

    def forward(self, x):
        x = self.conv(x).permute(0, 2, 3, 1)  # [B, 14, 14, 8]
        B, H, W, C = x.shape
        w = x.view(B, 2, 7, 2, 7, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, 49, C)  # [B*4, 49, 8]
        w = F.relu(self.fc(self.norm(w)))
        x = w.view(B, 2, 2, 7, 7, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H * W * C)
        return self.head(x)


def test_units_whose_batch_dim_holds_windows_capture_per_batch_size():
    model = Windows().eval()
    x = torch.rand(5, 1, 28, 28)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=16),
                  example_inputs=x[:2])
    snn = res.snn
    with torch.no_grad():
        ann, out = model(x), snn(x)
        assert snn.batch_folded  # the capture on one sample gave biases with 4 rows
        err = _relative_errors(out, ann, (0, 15))
        assert err[1] < min(err[0], 0.05), err
        torch.testing.assert_close(snn(x[:3], 4, mode="single"), snn(x[:3], 4), **TOLERANCES["single_vs_multi"])
        for rows in (1, 2):  # another batch size captures again; each image's answer does not depend on it
            torch.testing.assert_close(snn(x[:rows], 6), out[:6, :rows], rtol=1e-5, atol=1e-6)


class MHA(nn.Module):
    """torchvision's ViT block: ``x, _ = nn.MultiheadAttention(...)(x, x, x, need_weights=False)``."""

    def __init__(self, batch_first: bool = True, use_weights: bool = False, kdim: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim)
        self.ctx = nn.Linear(8, kdim or 8)
        self.use_weights, self.fc = use_weights, nn.Linear(8, 4)

    def forward(self, x):  # x [B, N, 8]; a sequence-first attention reads [N, B, 8] and answers in it
        h = F.relu(x)
        seq = (lambda t: t) if self.attn.batch_first else (lambda t: t.transpose(0, 1))
        out, weights = self.attn(seq(h), seq(self.ctx(h)), seq(self.ctx(h)), need_weights=self.use_weights)
        y = self.fc(seq(out))
        return y + weights.mean() if self.use_weights else y


@pytest.mark.parametrize("batch_first,kdim", [(True, None), (False, None), (True, 6)])
def test_multihead_attention_is_written_out(batch_first, kdim):
    model = MHA(batch_first, kdim=kdim).eval()
    x = torch.randn(5, 7, 8)
    gm, report = _passes(model)
    assert report.entry("write_out_attention").counts == {"MultiheadAttention": 1}
    assert not [m for m in gm.modules() if isinstance(m, nn.MultiheadAttention)]
    assert len([m for m in gm.modules() if type(m) is nn.Linear]) == 2 + 4  # ctx, fc + q, k, v, out projections
    torch.testing.assert_close(gm(x), model(x), **TOL)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=32))
    with torch.no_grad():
        ann, out = model(x), res.snn(x)
    err = _relative_errors(out, ann, (0, 31))
    assert err[1] < min(err[0], 0.05), err


def test_multihead_attention_whose_weights_are_used_is_listed():
    with pytest.raises(UnsupportedOpError, match="MultiheadAttention"):
        convert(MHA(use_weights=True), forward_loop=[torch.randn(4, 7, 8)])


def test_the_example_input_defaults_to_the_first_calibration_sample():
    x = torch.rand(4, 1, 10, 10)
    for data in (x, [x[:2], x[2:]], [(x, torch.zeros(4))], torch.utils.data.DataLoader(x, batch_size=2)):
        res = convert(ShapeBranchNet().eval(), forward_loop=data)
        assert res.report.input_shape == [1, 10, 10] and res.report.shape_branches, type(data)
    with pytest.raises(TraceError, match="example input is given"):  # a generator cannot be peeked at
        convert(ShapeBranchNet().eval(), forward_loop=(b for b in [x]))


@pytest.mark.parametrize("op", ["center", "flip", "fixed"])
def test_a_model_that_mixes_the_images_of_a_batch_is_refused(op):
    class Mixer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            if op == "center":
                x = x - x.mean(0, keepdim=True)  # batch statistics
            elif op == "flip":
                x = x.flip(0)  # images swap places
            else:
                x = x.view(2, 6)  # a batch size of 2 written into the code
            return self.fc(F.relu(x))

    message = {"center": r"depends on the other images of its batch, first at node sub \(.*test_model_patterns.py:",
               "flip": r"depends on the other images of its batch, first at node flip \(.*test_model_patterns.py:",
               "fixed": "no batch size is fixed"}[op]
    with pytest.raises(ConfigError, match=message):
        convert(Mixer(), forward_loop=[torch.rand(2, 6)])  # example: the first image
    if op == "fixed":  # an example of two images runs, one alone does not
        with pytest.raises(ConfigError, match="fails on a batch of one or two images"):
            convert(Mixer(), forward_loop=[torch.rand(2, 6)], example_inputs=torch.rand(2, 6))


def test_instance_norm_is_a_graded_unit():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(6)
            self.conv, self.norm, self.fc = nn.Conv2d(1, 4, 3), nn.InstanceNorm2d(4, affine=True), nn.Linear(4, 3)

        def forward(self, x):
            h = self.norm(F.relu(self.conv(x)))
            return self.fc(F.instance_norm(h)[:, :, 2, 3])  # one position (the spatial mean is 0)

    model, x = Net().eval(), torch.rand(6, 1, 10, 10)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=32))
    kinds = res.report.entry("replace_activations").counts
    assert kinds.get("GradedUnit(InstanceNorm2d)") == 1 and kinds.get("GradedUnit(instance_norm)") == 1, kinds
    with torch.no_grad():
        torch.testing.assert_close(res.snn.ann_forward(x), model(x), **TOL)
        out, ann = res.snn(x), model(x)
    err = _relative_errors(out, ann, (0, 31))
    assert err[1] < err[0], err


def _window_attention(x, qkv_weight, window: int, shift: int):
    """torchvision's Swin ``shifted_window_attention`` in small, registered with ``torch.fx.wrap`` as that one is:
    padding computed from shapes, a branch on shapes (no shift when one window covers the map) and an attention
    mask built by item assignment on ``x.new_zeros``."""
    B, H, W, C = x.shape
    pad = (window - W % window) % window
    x = F.pad(x, (0, 0, 0, pad, 0, pad))
    _, ph, pw, _ = x.shape
    if window >= ph:
        shift = 0
    if shift > 0:
        x = torch.roll(x, (-shift, -shift), (1, 2))
    nw, area = (ph // window) * (pw // window), window * window
    w = x.view(B, ph // window, window, pw // window, window, C).permute(0, 1, 3, 2, 4, 5).reshape(B * nw, area, C)
    q, k, v = F.linear(w, qkv_weight).chunk(3, dim=-1)
    attn = q.matmul(k.transpose(-2, -1)) * C**-0.5
    if shift > 0:
        mask = x.new_zeros((ph, pw))
        mask[-shift:, :] = 1
        mask[:, -shift:] += 2
        mask = mask.view(ph // window, window, pw // window, window).permute(0, 2, 1, 3).reshape(nw, area)
        mask = mask.unsqueeze(1) - mask.unsqueeze(2)
        mask = mask.masked_fill(mask != 0, -100.0)
        attn = (attn.view(B, nw, area, area) + mask.unsqueeze(0)).view(B * nw, area, area)
    out = F.softmax(attn, -1).matmul(v)
    out = out.view(B, ph // window, pw // window, window, window, C).permute(0, 1, 3, 2, 4, 5).reshape(B, ph, pw, C)
    if shift > 0:
        out = torch.roll(out, (shift, shift), (1, 2))
    return out[:, :H, :W, :].contiguous()


torch.fx.wrap("_window_attention")


def _count_nonzero_rows(x):
    """A wrapped function with a branch on values: it cannot be traced through."""
    if bool((x.sum(-1) > 0).any()):
        return x * 2
    return x


torch.fx.wrap("_count_nonzero_rows")


class ShiftedWindows(nn.Module):
    def __init__(self, branch_on_values: bool = False) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.conv = nn.Conv2d(1, 8, 2, stride=2)
        self.qkv = nn.Parameter(torch.randn(24, 8) * 0.4)
        self.head = nn.Linear(8 * 14 * 14, 10)
        self.branch_on_values = branch_on_values

    def forward(self, x):
        h = F.relu(self.conv(x)).permute(0, 2, 3, 1)  # [B, 14, 14, 8]: padded to 16x16, 16 windows of 4x4
        h = h + (_count_nonzero_rows(h) if self.branch_on_values else _window_attention(h, self.qkv, 4, 2))
        return self.head(torch.flatten(F.relu(h), 1))


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_functions_registered_with_fx_wrap_are_traced_through(coding):
    model, x = ShiftedWindows().eval(), torch.rand(6, 1, 28, 28)
    plain = torch.fx.symbolic_trace(model)  # what torch.fx alone makes of it: one opaque call
    assert [n for n in plain.graph.nodes if n.target is _window_attention]
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=32),
                  example_inputs=x[:1])
    graph = res.snn.gm.graph
    assert not [n for n in graph.nodes if n.target is _window_attention]
    assert [n for n in graph.nodes if n.target is operator.setitem]  # the mask is built in the graph
    assert [n for n in graph.nodes if n.target is torch._assert] and res.report.shape_branches
    kinds = res.report.entry("replace_activations").counts
    assert kinds.get("GradedUnit(softmax)") == 1 and kinds.get("GradedUnit(matmul)") == 2, kinds
    with torch.no_grad():
        ann = model(x)
        torch.testing.assert_close(res.snn.ann_forward(x), ann, **TOL)
        out = res.snn(x)
        torch.testing.assert_close(res.snn(x[:2], 4, mode="single"), res.snn(x[:2], 4),
                                   **TOLERANCES["single_vs_multi"])
        with pytest.raises(ConfigError, match="traced for inputs of shape"):
            res.snn(torch.rand(2, 1, 8, 8), 2)  # 4x4 maps: one window covers them, no shift: the other branch
    err = _relative_errors(out, ann, (0, 31))
    assert err[1] < err[0] / 10, err  # the SNN converges to the ANN


def test_a_wrapped_function_that_cannot_be_traced_through_is_listed_with_why():
    model = ShiftedWindows(branch_on_values=True).eval()
    x = torch.rand(4, 1, 28, 28)
    with pytest.raises(UnsupportedOpError) as info:
        convert(model, forward_loop=[x], example_inputs=x[:1])
    (node,) = info.value.nodes
    assert node.target.endswith("_count_nonzero_rows") and "branch on tensor values" in node.reason
    assert "torch.fx.wrap" in node.reason


@pytest.mark.parametrize("make", ["zeros_like", "new_ones"])
def test_tensors_built_from_shapes_alone_are_constants(make):
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(8)
            self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4 * 8 * 8, 5)

        def forward(self, x):
            h = F.relu(self.conv(x))
            mask = torch.zeros_like(h) if make == "zeros_like" else h.new_ones(h.shape[-2:]) * 0
            mask[..., 2:6, 1:5] = 1.0  # item assignment on a tensor that depends on h's shape only
            return self.fc(torch.flatten(h * mask, 1))

    model, x = Masked().eval(), torch.rand(6, 1, 10, 10)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=32),
                  example_inputs=x[:1])
    counts = res.report.entry("replace_activations").counts
    assert not any(k.startswith("GradedUnit") for k in counts), counts  # a constant mask: h * mask is linear
    with torch.no_grad():
        ann = model(x)
        torch.testing.assert_close(res.snn.ann_forward(x), ann, **TOL)
        out = res.snn(x)
    err = _relative_errors(out, ann, (0, 31))
    assert err[1] < err[0] / 10, err


class Assigned(nn.Module):
    """Item assignment on activations: a constant into a channel, MViTv2's relative-position terms added into a block
    of a tensor (``h[..., 2:, 2:] = (h[..., 2:, 2:] ... + rel).view(...)``), a feature map copied into a zero tensor."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(8)
        self.kind = kind
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        h = F.relu(self.conv(x))  # [B, 4, 8, 8]
        if self.kind == "constant":
            h[:, 0] = 0.5
        elif self.kind == "block":
            h[:, :, 2:, 2:] = (h[:, :, 2:, 2:] * 2 + F.relu(h[:, :, :6, :6] - 0.1)).view(h.shape[0], 4, 6, 6)
        elif self.kind == "into_zeros":
            z = h.new_zeros(h.shape[0], 4, 8, 8)
            z[:, :2] = h[:, 1:3]
            h = h + z
        elif self.kind == "view_read_after":  # v sees the new values
            v = h[:, 0]
            h[:, 0] = 1.0
            h = h + v[:, None]
        elif self.kind == "into_view":  # writes into h through v
            v = h[:, 1:]
            v[:, 0] = 1.0
        elif self.kind == "index_from_input":
            h[h > 0.5] = 0.0
        return self.fc(torch.flatten(h, 1))


@pytest.mark.parametrize("kind", ["constant", "block", "into_zeros"])
@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_item_assignment_with_a_constant_index_is_written_out_and_linear(kind, coding):
    from snnconvert.convert.passes.assign import assign

    model, x = Assigned(kind).eval(), torch.rand(6, 1, 10, 10)
    gm, report = _passes(model, x[:2])
    assert report.entry("functional_item_assignment").counts == {"setitem": 1}
    assert not [n for n in gm.graph.nodes if n.target is operator.setitem]
    assert [n.target for n in gm.graph.nodes].count(assign) == 1
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=64))
    counts = res.report.entry("replace_activations").counts
    assert counts.get("GradedUnit(product)", 0) == 0 and counts.get("SpikingNeuron") == 1 + (kind == "block"), counts
    with torch.no_grad():
        ann, out = model(x), res.snn(x)
        torch.testing.assert_close(res.snn.ann_forward(x), ann, **TOL)
    err = _relative_errors(out, ann, (0, 63))
    assert err[1] < min(err[0], 0.05), err


@pytest.mark.parametrize("kind, why", [
    ("view_read_after", "a view of the tensor made before it is read after it"),
    ("into_view", "it writes into a view of another tensor"),
    ("index_from_input", "its index is computed from the input")])
def test_item_assignment_that_cannot_be_written_out_is_listed_at_its_line_with_why(kind, why):
    x = torch.rand(4, 1, 10, 10)
    with pytest.raises(UnsupportedOpError) as info:
        convert(Assigned(kind).eval(), forward_loop=[x], example_inputs=x[:1])
    (node,) = [n for n in info.value.nodes if n.target.endswith("setitem")]  # index_from_input: its `>` too
    assert node.source.startswith(__file__)
    assert why in str(info.value), str(info.value)


class MaskSelect(nn.Module):
    """A constant mask selects between an activation and constants (the dynamo exporter's adaptive average pooling
    over unequal windows: ``Where(mask, 0, x)``)."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        torch.manual_seed(9)
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4 * 8 * 8, 5)
        self.register_buffer("mask", torch.rand(1, 4, 8, 8) > 0.6)
        self.spelling = spelling

    def forward(self, x):
        h = F.relu(self.conv(x))
        if self.spelling == "where":
            h = torch.where(self.mask, torch.full_like(h, 0.25), h)
        elif self.spelling == "masked_fill":
            h = h.masked_fill(self.mask, 0.0)
        else:  # a ReLU spelled with a mask read from the input: not linear
            h = torch.where(h > 0.5, h, torch.zeros_like(h))
        return self.fc(torch.flatten(h, 1))


@pytest.mark.parametrize("spelling", ["where", "masked_fill"])
@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_selection_by_a_constant_mask_is_linear(spelling, coding):
    model, x = MaskSelect(spelling).eval(), torch.rand(6, 1, 10, 10)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=32))
    counts = res.report.entry("replace_activations").counts
    assert not any(k.startswith("GradedUnit") for k in counts), counts
    with torch.no_grad():
        ann = model(x)
        torch.testing.assert_close(res.snn.ann_forward(x), ann, **TOL)
        out = res.snn(x)
    err = _relative_errors(out, ann, (0, 31))
    assert err[1] < err[0] / 5, err


def test_selection_by_a_mask_computed_from_the_input_is_one_graded_unit():
    """``where(h > 0.5, h, zeros_like(h))`` is a function of h alone (piecewise.py): one graded unit, not a linear
    op (a selection between two separately computed tensors stays listed: tests/test_graded.py)."""
    model, x = MaskSelect("relu").eval(), torch.rand(4, 1, 10, 10)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=16))
    assert res.report.entry("replace_activations").counts.get("GradedUnit(PiecewiseFunction)") == 1
    with torch.no_grad():
        ann, out = model(x), res.snn(x)
    torch.testing.assert_close(res.snn.ann_forward(x), ann, **TOL)
    err = _relative_errors(out, ann, (0, 15))
    assert err[1] < err[0] / 4, err  # a jump at 0.5: values near it converge slowly


class Casts(nn.Module):
    """Casts on the way (timm's rotary embeddings end in ``out.to(dtype=x.dtype)``); ``integer=True`` rounds."""

    def __init__(self, integer: bool = False) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.integer = integer
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.a(x))
        h = h.to(dtype=x.dtype) + h.to(x) + h.to("cpu", torch.float32)
        if self.integer:
            h = h.to(torch.int64).float()
        return self.b(h)


def test_float_casts_pass_values_and_integer_casts_are_listed():
    x = torch.randn(5, 8)
    res = convert(Casts().eval(), forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=16))
    with torch.no_grad():
        torch.testing.assert_close(res.snn.ann_forward(x), Casts().eval()(x), **TOL)
    with pytest.raises(UnsupportedOpError, match=r"to_3: call_method to .*method is not convertible"):
        convert(Casts(integer=True).eval(), forward_loop=[x])


_COMPILE_AFTER_CONVERT = """
import sys
import torch
from torch import nn
from snnconvert.convert import convert
assert "torch._dynamo" not in sys.modules  # the conversion's trace is the first to import it
model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
convert(model, forward_loop=[torch.rand(4, 3)])
f = torch.compile(lambda n: torch.zeros(n, 2) + torch.ones(n, 2) + torch.empty(n, 2).zero_(), backend="eager",
                  fullgraph=True)
print(float(f(3).sum()))
"""


def test_torch_compile_works_after_a_conversion_in_a_fresh_process():
    """The tracer passes ``torch.ones(n, n)``'s traced sizes as a tuple by patching torch's factories while it
    traces; torch.fx's first traced node imports torch._dynamo, which keeps the functions it finds: imported while
    they were patched, ``torch.compile`` of code calling ``torch.zeros`` failed for the rest of the process (the
    inductor backend after a conversion through the API, or a Triton run first in the CLI)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _COMPILE_AFTER_CONVERT], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "6.0"


#: Python values model code takes from shapes, each one line of a real model (the first: Ultralytics' C2f)
SHAPE_VALUES = {
    "list_chunk": lambda z: torch.cat(list(z.chunk(2, 1))[::-1], 1),
    "view_star_shape": lambda z: z.flatten(2).view(*z.shape),
    "for_split": lambda z: torch.cat([t * 2 for t in z.split(4, 1)], 1),
    "int_size": lambda z: F.interpolate(F.max_pool2d(z, 2), size=(int(z.shape[2]), int(z.shape[3]))),
    "range_channels": lambda z: torch.cat([z[:, i:i + 1] * (i + 1) for i in range(int(z.shape[1]))], 1),
    "float_math": lambda z: z * math.sqrt(z.shape[1]) + int(z.shape[2] * 0.5),  # ViT's int(math.sqrt(N))
    "tensor_of_shape": lambda z: z / torch.tensor(z.shape[-2:], dtype=torch.float32)[0],
    "len_shape": lambda z: z if len(z.shape) == 4 else z * 0,
    "numel": lambda z: z if z.numel() > 0 else z * 0,
    "list_index": lambda z: z * [0.5, 1.0, 2.0][int(z.dim()) - 2],
    "roll_by_size": lambda z: torch.roll(z, z.size(-1) // 2, -1) + torch.narrow(z, 2, 0, z.size(2)),
}


class ShapeValues(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.f = SHAPE_VALUES[kind]
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(self.f(torch.relu(self.c1(x))))


@pytest.mark.parametrize("kind", list(SHAPE_VALUES))
def test_python_values_taken_from_shapes_trace_and_convert(kind):
    """``len()``, ``int()``, indices and iteration of traced shapes and sequences (which torch.fx refuses) are read
    on the example input: the converted graph equals the model at every batch size, and a guard checks the value on
    every later input."""
    model, x = ShapeValues(kind).eval(), torch.rand(5, 3, 12, 12)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=16),
                  example_inputs=x[:1])
    with torch.no_grad():
        for rows in (1, 5):
            torch.testing.assert_close(res.snn.ann_forward(x[:rows]), model(x[:rows]), **TOL)
        ann, out = model(x), res.snn(x)
    err = _relative_errors(out, ann, (0, 15))
    assert err[1] < min(err[0], 0.05), err
    if kind not in ("view_star_shape", "tensor_of_shape", "numel", "roll_by_size"):  # values in the graph
        assert any("test_model_patterns.py:" in b and " = " in b for b in res.report.shape_branches)


def test_a_size_passed_to_a_torch_function_stays_traced():
    """``torch.roll(z, z.size(-1) // 2, -1)``: torch's argument parser reads a traced size through ``__index__``
    before dispatching: defining it fixed the shift at the example's size (refused at 12 × 12 after tracing 8 × 8)."""
    model = ShapeValues("roll_by_size").eval()
    gm = trace_module(model, torch.rand(1, 3, 8, 8))
    x = torch.rand(2, 3, 12, 12)
    torch.testing.assert_close(gm(x), model(x), **TOL)
    assert not gm.meta["shape_branches"]


def test_a_python_value_read_on_the_example_is_guarded():
    SHAPE_VALUES["_rows"] = lambda z: torch.cat([z[:, :, i:i + 1] * i for i in range(int(z.shape[2]))], 2)
    try:
        model = ShapeValues("_rows").eval()
        gm = trace_module(model, torch.rand(1, 3, 12, 12))
        x = torch.rand(2, 3, 12, 12)
        torch.testing.assert_close(gm(x), model(x), **TOL)
        with pytest.raises(AssertionError, match=r"traced for inputs of shape \[1, 3, 12, 12\], and int\(\) at "
                                                 r".*test_model_patterns.py:\d+ gives 12 there but not for this input"):
            gm(torch.rand(2, 3, 16, 16))  # 16 rows: the loop ran 12 times
    finally:
        del SHAPE_VALUES["_rows"]


@pytest.mark.parametrize("code,message", [
    (lambda z: torch.stack([t for t in z]), r"iteration at .*test_model_patterns.py:\d+ changes with the batch size"),
    (lambda z: z * len(z), r"len\(\) at .*test_model_patterns.py:\d+ changes with the batch size"),
    (lambda z: z * 2 if z.shape != torch.Size([1, 8, 12, 12]) else z,  # a cache keyed on the whole shape
     r"a branch at .*test_model_patterns.py:\d+ goes one way for a batch of 1 and the other for 2, .* make the "
     r"condition independent of the batch size"),
    (lambda z: z * int(z.sum() > 0), r"int\(\) from tensor values at .*test_model_patterns.py:\d+ \(data-dependent"),
    (lambda z: z + torch.ones(1, 8, 12, 12).expand(z.shape[0], -1, -1, -1),
     r"at .*test_model_patterns.py:\d+: TypeError: .*; a tensor built inside forward .* build it from the input "
     r"\(x.new_ones\(1, 6, 4\)\) or register it as a buffer"),
    (lambda z: torch.cat([z[:, i:i + 1] for i in range(z.shape[1])], 1),
     r"at .*test_model_patterns.py:\d+: TypeError: .* cannot be interpreted as an integer; a traced size used where "
     r"Python needs an int \(range\(x.size\(1\)\), a list index\): write int\(x.size\(1\)\)"),
    (lambda z: nn.ReLU()(z), r"at .*test_model_patterns.py:\d+: NameError: .*; a module created inside forward "
     r"\(nn.ReLU\(\)\(x\)\) is not part of the model: create it in __init__"),
])
def test_python_values_from_the_batch_size_or_tensor_values_are_refused(code, message):
    SHAPE_VALUES["_probe"] = code
    try:
        with pytest.raises(TraceError, match=message):
            trace_module(ShapeValues("_probe").eval(), torch.rand(1, 3, 12, 12))
        with pytest.raises(TraceError, match="an example input is given"):  # without one: said so
            trace_module(ShapeValues("len_shape").eval())
    finally:
        del SHAPE_VALUES["_probe"]


class LinearMoves(nn.Module):
    """Linear data movement spelled as methods and unfold/fold: ``x.repeat_interleave``, ``F.unfold`` / ``F.fold``
    (an im2col round trip), ``nn.Unfold``, ``x.unfold`` (sliding windows) and ``x.type(torch.float32)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(10)
        self.conv, self.unfold = nn.Conv2d(1, 4, 3, padding=1), nn.Unfold(2, stride=2)
        self.fc = nn.Linear(512 + 128 + 128 + 256, 5)

    def forward(self, x):  # x [B, 1, 8, 8]
        h = F.relu(self.conv(x)).type(torch.float32)
        a = h.repeat_interleave(2, dim=1)  # [B, 8, 8, 8]
        b = F.fold(F.unfold(h, 2, stride=2), (8, 8), 2, stride=2)[:, :1].repeat_interleave(2, 2)  # [B, 1, 16, 8]
        c = self.unfold(h)  # [B, 16, 16]
        d = h.unfold(2, 2, 2).unfold(3, 2, 2)  # [B, 4, 4, 4, 2, 2]
        return self.fc(torch.cat([a.flatten(1), b.flatten(1)[:, :16 * 8], c.flatten(1)[:, :16 * 8],
                                  d.flatten(1)], 1))


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_linear_moves_spelled_as_methods_and_unfold_fold_convert(coding):
    model, x = LinearMoves().eval(), torch.rand(4, 1, 8, 8)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=32))
    counts = res.report.entry("replace_activations").counts
    assert not any(k.startswith("GradedUnit") for k in counts), counts  # linear: applied unchanged at every step
    with torch.no_grad():
        ann, out = model(x), res.snn(x)
        torch.testing.assert_close(res.snn.ann_forward(x), ann, **TOL)
    err = _relative_errors(out, ann, (0, 31))
    assert err[1] < min(err[0], 0.05), err


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_a_yolo_style_detector_converts_and_converges(coding):
    """YOLOv8-style code end to end (tests/nets.py ``YoloNet``): C2f's ``list(x.chunk(2, 1))``, SPPF, FPN upsampling,
    heads reshaped by traced sizes and a grid from ``torch.arange(H)``, a NamedTuple output."""
    from nets import YoloNet

    model, x = YoloNet().eval(), torch.rand(6, 1, 32, 32)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=16),
                  example_inputs=x[:1])
    with torch.no_grad():
        for rows in (1, 6):  # the graph serves every batch size
            for got, want in zip(res.snn.ann_forward(x[:rows]), model(x[:rows])):
                torch.testing.assert_close(got, want, **TOL)
        ann, out = model(x), res.snn(x)
    assert type(out) is type(ann)
    for got, want in zip(out, ann):
        err = _relative_errors(got - want.mean(), want - want.mean(), (0, 15))  # the part the input changes
        assert err[1] < err[0], err


def test_a_yolo_style_detector_exported_to_onnx_imports_and_converts(tmp_path):
    import warnings

    import onnxruntime as ort
    from nets import YoloNet

    from snnconvert.convert import load_onnx

    model, x = YoloNet().eval(), torch.rand(3, 1, 32, 32)
    path = tmp_path / "yolo.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "b"}})
    want = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})
    gm = load_onnx(path)
    with torch.no_grad():
        for got, ref in zip(gm(x), want):
            torch.testing.assert_close(got, torch.from_numpy(ref), rtol=1e-4, atol=1e-4)
    res = convert(str(path), forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=8))
    with torch.no_grad():
        assert [o.shape for o in res.snn(x)] == [(8, 3, 160, 4), (8, 3, 160, 4)]


class ConstantBranchRelu(nn.Module):
    """SwinV2's continuous position bias: an MLP with a ReLU applied to a coordinate table (a buffer), added to the
    activations; the ReLU computes a constant."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 5)
        self.register_buffer("table", torch.randn(8, 8, 2))
        self.mlp = nn.Sequential(nn.Linear(2, 16), nn.ReLU(inplace=True), nn.Linear(16, 4))

    def forward(self, x):
        bias = self.mlp(self.table).permute(2, 0, 1)  # [4, 8, 8], the same for every input
        return self.fc((F.relu(self.conv(x)) + bias).mean((2, 3)))


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_a_relu_on_parameters_alone_stays_a_constant(coding):
    """It got a spiking neuron (calibrated on the table's one value per element), and ``snn(x)`` failed on the
    neuron's per-element bias: a constant is computed as it is, at every step."""
    model, x = ConstantBranchRelu().eval(), torch.rand(4, 1, 8, 8)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=32))
    assert len(res.snn.neuron_names) == 1  # the ReLU on the convolution only
    with torch.no_grad():
        ann, out = model(x), res.snn(x)
        torch.testing.assert_close(res.snn.ann_forward(x), ann, **TOL)
    err = _relative_errors(out, ann, (0, 31))
    assert err[1] < min(err[0], 0.05), err


def test_values_read_on_the_example_run_each_layer_once_per_input():
    """Each branch or Python value read while tracing ran the whole graph traced so far again (twice: one image,
    two): a model reading one size per block traced in time quadratic in its depth. Now each layer runs once for the
    example and once for the example twice."""
    class Blocks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(3, 3, 3, padding=1) for _ in range(10))

        def forward(self, x):
            for conv in self.convs:
                x = F.relu(conv(x))
                x = x * (int(x.shape[2]) / 8)  # a size read after every convolution
            return x

    model = Blocks().eval()
    calls = []  # convolutions run on tensors (while tracing, a leaf module only records a node)
    for conv in model.convs:
        conv.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    gm = trace_module(model, torch.rand(1, 3, 8, 8))
    calls_by_batch = {b: calls.count(b) for b in set(calls)}
    assert calls_by_batch == {1: 10, 2: 10}, calls_by_batch  # was 55 and 55: the graph so far, at every read
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(gm(x), model(x), **TOL)


class FusedArithmetic(nn.Module):
    """Fused arithmetic of real model code: GPT-2's ``Conv1D`` (``torch.addmm(bias, x, weight)``), ``baddbmm`` with
    scales, ``addcmul`` / ``addcdiv`` of two activations, ``lerp`` by a number and by a parameter, an in-place
    ``addcmul_`` whose input is read again afterwards."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.fc = nn.Linear(12, 12)
        self.weight, self.bias = nn.Parameter(torch.randn(12, 12) / 4), nn.Parameter(torch.randn(12) / 4)
        self.mix = nn.Parameter(torch.rand(12))
        self.head = nn.Linear(12, 3)

    def forward(self, x):  # x [B, 4, 12]
        a = F.relu(self.fc(x))
        b = torch.addmm(self.bias, a.view(-1, 12), self.weight).view(a.shape)
        c = F.relu(torch.baddbmm(b, a, self.weight.expand(a.shape[0], 12, 12), beta=0.5, alpha=2.0))
        d = F.relu(torch.addcmul(c, a, b, value=0.3)) + a.addcdiv(c, b.abs() + 1.0, value=-0.2)
        e = torch.lerp(a, d, 0.25) + d.lerp(c, self.mix)
        e = F.relu(e)
        f = e.clone()
        f.addcmul_(a, c, value=0.1)
        return self.head((f + e).mean(1))


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_fused_arithmetic_is_written_out_and_converges(coding):
    model, x = FusedArithmetic().eval(), torch.rand(8, 4, 12)
    gm, report = _passes(model, x[:2])
    fused = {"addmm", "baddbmm", "addcmul", "addcdiv", "lerp", "addcmul_"}
    left = [n.name for n in gm.graph.nodes
            if getattr(n.target, "__name__", n.target) in fused and n.op in ("call_function", "call_method")]
    assert not left, left
    assert report.entry("decompose_fused_arithmetic").counts == {
        "torch.addmm": 1, "torch.baddbmm": 1, "torch.addcmul": 1, "Tensor.addcdiv": 1, "torch.lerp": 1,
        "Tensor.lerp": 1, "Tensor.addcmul_": 1}
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), **TOL)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=64),
                  example_inputs=x[:2])
    counts = res.report.entry("replace_activations").counts
    assert counts.get("GradedUnit(product)", 0) == 3, counts  # a·b, c / (|b| + 1), a·c; the rest is linear
    with torch.no_grad():
        ann, out = model(x), res.snn(x)
        torch.testing.assert_close(res.snn.ann_forward(x), ann, **TOL)
    err = _relative_errors(out, ann, (0, 63))
    assert err[1] < min(err[0], 0.05), err


def test_fused_arithmetic_writing_into_out_is_listed():
    class Out(nn.Module):
        def forward(self, x):
            y = torch.empty(x.shape[0], 4)
            torch.addcmul(F.relu(x), x, x, out=y)
            return y

    with pytest.raises(UnsupportedOpError, match="addcmul"):
        convert(Out(), forward_loop=[torch.rand(2, 4)])


class Autocast(nn.Module):
    """timm's EfficientViT attention: ``with torch.autocast(device_type=v.device.type, enabled=False)``."""

    def __init__(self, enabled: bool = False) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.fc, self.head, self.enabled = nn.Linear(8, 8), nn.Linear(8, 3), enabled

    def forward(self, x):
        a = F.relu(self.fc(x))
        with torch.autocast(device_type=a.device.type, enabled=self.enabled):
            b = F.relu(self.fc(a.float()))
        with torch.amp.autocast("cuda", enabled=False):
            b = b * 2
        return self.head(b)


def test_autocast_blocks_are_traced_through(caplog):
    model, x = Autocast().eval(), torch.rand(8, 8)
    with caplog.at_level("WARNING", logger="snnconvert"):
        res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=16))
    assert "autocast" not in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(res.snn.ann_forward(x), model(x), **TOL)
    assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and not torch.is_autocast_enabled("cpu")
    assert torch.amp.autocast_mode.autocast.__init__.__name__ == "__init__"  # restored after tracing
    with caplog.at_level("WARNING", logger="snnconvert"):
        convert(Autocast(enabled=True).eval(), forward_loop=[x])
    assert "torch.autocast at " in caplog.text and "test_model_patterns.py" in caplog.text, caplog.text


class _DecoratedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    @torch.autocast("cpu", dtype=torch.bfloat16)  # made at import, entered while tracing
    def forward(self, x):
        return F.relu(self.fc(x)).float()


class _DecoratedOff(_DecoratedBlock):
    @torch.autocast("cpu", enabled=False)
    def forward(self, x):
        return F.relu(self.fc(x)).float()


@pytest.mark.parametrize("enabled", [True, False])
def test_autocast_decorator_is_traced_through_and_warned_when_enabled(caplog, enabled):
    """``@torch.autocast(...)`` on a forward: the autocast exists before tracing (its __init__ is not seen), so its
    entry is a no-op while tracing; an enabled one warns with the line that calls the block, and the traced graph
    computes in float32 (equal to the ANN run outside autocast, not to its bfloat16 run)."""
    torch.manual_seed(7)
    block = (_DecoratedBlock if enabled else _DecoratedOff)()
    model, x = nn.Sequential(nn.Linear(8, 8), block, nn.Linear(8, 3)).eval(), torch.rand(16, 8)
    with caplog.at_level("WARNING", logger="snnconvert"):
        res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=16))
    warned = re.search(r"made before tracing \(a decorator or a stored context\) and entered at \S+ \(in module '1'\)",
                       caplog.text)
    assert bool(warned) == enabled, caplog.text
    assert not torch.is_autocast_enabled("cpu")
    cls = torch.amp.autocast_mode.autocast
    assert [getattr(cls, f).__name__ for f in ("__init__", "__enter__", "__exit__")] == ["__init__", "__enter__",
                                                                                       "__exit__"]  # restored
    with torch.no_grad():
        traced = res.snn.ann_forward(x)
        assert traced.dtype == torch.float32
        plain = model[2](F.relu(block.fc(model[0](x))))  # the block's maths outside autocast
        torch.testing.assert_close(traced, plain, **TOL)
        if enabled:  # the ANN itself runs the block in bfloat16: the traced graph does not
            assert not torch.allclose(model(x).float(), plain, rtol=0, atol=1e-6)


class SegNetLike(nn.Module):
    """SegNet's encoder-decoder: max-pools returning indices, max-unpooling at them (a module with the default output
    size, a function with ``output_size=x.size()`` of an odd-sized map), a 1-d pair with ``F.max_pool1d`` and
    the size as a list)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.enc1, self.enc2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.dec2, self.dec1 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 3, 3, padding=1)
        self.pool, self.unpool = nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)
        self.line = nn.Conv1d(3, 3, 3, padding=1)

    def forward(self, x):  # x [B, 1, 14, 14]
        a = F.relu(self.enc1(x))
        p1, i1 = self.pool(a)  # [B, 4, 7, 7]
        b = F.relu(self.enc2(p1))
        p2, i2 = F.max_pool2d(b, 2, return_indices=True)  # [B, 4, 3, 3] of an odd-sized map
        u2 = F.max_unpool2d(F.relu(self.dec2(p2)), i2, 2, output_size=b.size())  # [B, 4, 7, 7]
        u1 = self.unpool(u2 + p1, i1)  # [B, 4, 14, 14]
        c = F.relu(self.dec1(u1)).mean(-1)  # [B, 3, 14]
        q, j = F.max_pool1d(c, 2, return_indices=True)
        return F.max_unpool1d(self.line(q), j, 2, output_size=[c.shape[-1]])


@pytest.mark.parametrize("mode", ["multi", "single"])
@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_max_unpooling_runs_at_the_maxima_of_the_decoded_pool_input(coding, mode):
    """max_unpool with indices from a max-pool was listed (indices: integers from the input); now each is one graded
    unit of the values and the pool's input: at every step its inputs to max_unpool_at are its decoded inputs and its
    output decodes to max_unpool_at's result. (Checked in two parts: the maxima of quantised inputs tie often, and
    the test's float64 decoding would break such ties otherwise than the unit's float32 one.)"""
    from test_graded import _decode, _decode_input, _units

    from snnconvert.convert.passes.unpool import max_unpool_at

    model, x = SegNetLike().eval(), torch.rand(8, 1, 14, 14)
    gm, report = _passes(model, x[:2])
    assert report.entry("pair_max_unpooling").counts == {"max_unpool": 3}
    assert sum(n.target is max_unpool_at for n in gm.graph.nodes) == 3
    assert not any(getattr(m, "return_indices", False) for m in gm.modules())
    assert not any(n.kwargs.get("return_indices") for n in gm.graph.nodes)
    assert not [n for n in gm.graph.nodes if not n.users and n.op not in ("output", "call_function")]
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), **TOL)
    T = 8
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=T,
                                                                              identity_neurons="off"))
    assert res.report.entry("replace_activations").counts.get("GradedUnit(max_unpool_at)") == 3
    with torch.no_grad():
        torch.testing.assert_close(res.snn.ann_forward(x), model(x), **TOL)
    units = {name: u for name, u in _units(res.snn).items() if getattr(u.f, "target", None) is max_unpool_at}
    calls: dict[str, list] = {name: [] for name in units}
    streams: dict[str, list] = {name: [] for name in units}

    def recorder(name, unit):
        def record(f, xs, out):
            if not (unit.capture or unit.analog):
                calls[name].append(([a.double().clone() for a in xs], out.double().clone()))
        return record

    def hook(name):
        def record(module, args, out):
            if not (module.capture or module.analog):
                streams[name].append(([a.double() for a in args], out.double()))
        return record

    handles = [h for name, u in units.items()
               for h in (u.f.register_forward_hook(recorder(name, u)), u.register_forward_hook(hook(name)))]
    with torch.no_grad():
        res.snn(x, T, mode=mode)
    for h in handles:
        h.remove()
    for name, unit in units.items():
        assert len(calls[name]) == T, name
        if mode == "multi":
            (args, out), = streams[name]
            args, out = [a.reshape(T, -1, *a.shape[1:]) for a in args], out.reshape(T, -1, *out.shape[1:])
        else:
            args = [torch.stack([c[0][i] for c in streams[name]]) for i in range(2)]
            out = torch.stack([c[1] for c in streams[name]])
        biases = unit.biases if coding == "differential" else (None, None)
        decoded = [_decode_input(a, None if b is None else b.double(), coding) for a, b in zip(args, biases)]
        for i in range(2):
            torch.testing.assert_close(torch.stack([c[0][i] for c in calls[name]]), decoded[i], rtol=1e-4,
                                       atol=1e-5, msg=name)
        torch.testing.assert_close(_decode(out, coding), torch.stack([c[1] for c in calls[name]]), rtol=1e-4,
                                   atol=1e-5, msg=name)


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_a_segnet_style_network_converges(coding):
    """The maxima move while the pool input's running average settles: a quantised input can put a window's maximum
    elsewhere (rate coding is at 0.29 relative error after 64 steps, differential coding at 0.0 after 128)."""
    model, x = SegNetLike().eval(), torch.rand(8, 1, 14, 14)
    T = 128 if coding == "differential" else 64
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=T))
    with torch.no_grad():
        ann, out = model(x), res.snn(x)
    err = _relative_errors(out, ann, (0, T - 1))
    assert err[1] < (min(err[0] / 20, 0.02) if coding == "differential" else err[0] / 2), err


def test_max_pool_indices_read_for_anything_else_are_listed():
    class Indices(nn.Module):
        def forward(self, x):
            p, i = F.max_pool2d(F.relu(x), 2, return_indices=True)
            return F.max_unpool2d(p, i, 2) + i.float().mean()

    with pytest.raises(UnsupportedOpError, match="return_indices"):
        convert(Indices(), forward_loop=[torch.rand(2, 1, 4, 4)])


class InPlaceStatements(nn.Module):
    """In-place arithmetic written as statements, results unused (a residual ``out.add_(h)``, a bias ``h.add_(b)``,
    a scaling ``h.mul_(2)``), an in-place ``clamp_(min=0)`` ReLU, and an in-place update of the input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.c1, self.c2, self.c3 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3)
        self.register_buffer("b", torch.randn(1, 4, 1, 1) * 0.3)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        x.mul_(2.0)
        h = F.relu(self.c1(x))
        out = self.c2(h)
        out.add_(h)
        out.add_(self.b)
        out.clamp_(min=0)
        out.mul_(0.5)
        return self.fc(F.relu(self.c3(out)).flatten(1))


class OutOfPlaceStatements(InPlaceStatements):
    """The same network written out of place."""

    def forward(self, x):
        h = F.relu(self.c1(x * 2.0))
        out = (self.c2(h) + h + self.b).clamp(min=0) * 0.5
        return self.fc(F.relu(self.c3(out)).flatten(1))


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_in_place_statements_are_made_out_of_place(coding):
    """An in-place method whose result is unused wrote into the tensor later nodes read: made out of place with those
    readers redirected (the SNN lost such writes: a stateful unit keeps its tensors across steps). The SNN is the one
    of the model written out of place, and neither the calibration images nor the example are written into."""
    model, x = InPlaceStatements().eval(), torch.rand(8, 1, 8, 8)
    gm, report = _passes(model, x[:2].clone())
    left = [n.name for n in gm.graph.nodes if n.op == "call_method" and n.target.endswith("_")]
    assert not left, left
    assert report.entry("out_of_place_methods").counts == {"Tensor.mul_": 2, "Tensor.add_": 2, "Tensor.clamp_": 1}
    with torch.no_grad():
        torch.testing.assert_close(gm(x.clone()), model(x.clone()), **TOL)
    kept = x.clone()
    cfg = ConversionConfig.for_coding(coding, timesteps=16)
    res = convert(model, forward_loop=[x], config=cfg, example_inputs=x[:2])
    assert torch.equal(x, kept)
    assert res.report.entry("canonicalize_activations").counts.get("Tensor.clamp(min=0)") == 1  # a ReLU site
    twin = convert(OutOfPlaceStatements().eval(), forward_loop=[x], config=cfg)
    with torch.no_grad():
        torch.testing.assert_close(res.snn(x), twin.snn(x), rtol=1e-5, atol=1e-6)


class InPlaceOnAView(nn.Module):
    def __init__(self, spelling: str) -> None:
        super().__init__()
        torch.manual_seed(8)
        self.spelling, self.c1, self.c2 = spelling, nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3)

    def forward(self, x):
        h = self.c1(x)
        if self.spelling == "slice":
            h[:, :2].relu_()
        elif self.spelling == "F.relu":
            F.relu(h[:, 1:3], inplace=True)
        elif self.spelling == "view":
            v = h.view(h.size(0), -1)
            v.add_(1.0)
        elif self.spelling == "view first":
            v = h.flatten(1)
            h.mul_(2.0)  # v, made before, sees the doubled values
            return v
        else:  # written out: converts
            h[:, :2] = F.relu(h[:, :2])
        return F.relu(self.c2(h)).flatten(1)


@pytest.mark.parametrize("spelling", ["slice", "F.relu", "view", "view first"])
def test_in_place_writes_through_a_view_are_listed(spelling):
    """An in-place op on a view writes into the tensor behind it (and a view of a tensor sees writes into it): the
    graph cannot follow that, so the node is listed with how to write it out, not converted into another network."""
    with pytest.raises(UnsupportedOpError, match="in-place .* writes into a (view of a tensor|tensor whose view)"):
        convert(InPlaceOnAView(spelling).eval(), forward_loop=[torch.rand(4, 1, 8, 8)])
    res = convert(InPlaceOnAView("assigned").eval(), forward_loop=[torch.rand(4, 1, 8, 8)])
    assert res.report.entry("functional_item_assignment").counts == {"setitem": 1}


class AliasedUpdate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(9)
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.c1(x))
        skip = x
        x += self.c2(x)  # torch.fx records x = x + c2(x): skip keeps the old values in the graph
        return torch.cat([F.relu(x), skip], 1).mean((2, 3))


def test_a_graph_that_computes_something_else_than_the_model_is_refused():
    """torch.fx records ``x += y`` as ``x = x + y``; a tensor another name holds then differs between the model and
    its graph: compared once on the example, one error line instead of a network that converges elsewhere."""
    with pytest.raises(ConfigError, match=r"graph's output differs from the model's \(largest difference") as info:
        convert(AliasedUpdate().eval(), forward_loop=[torch.rand(4, 1, 8, 8)])
    assert "\n" not in str(info.value)


class Reparametrized(nn.Module):
    """Weight norm (both APIs) and spectral norm on layers followed by batch norms."""

    def __init__(self) -> None:
        super().__init__()
        from torch.nn.utils import parametrizations, spectral_norm, weight_norm

        torch.manual_seed(10)
        self.c1 = parametrizations.weight_norm(nn.Conv2d(1, 4, 3))
        self.c2 = weight_norm(nn.Conv2d(4, 4, 3))  # the older forward pre-hook
        self.c3 = parametrizations.spectral_norm(nn.Conv2d(4, 4, 3))
        self.fc = spectral_norm(nn.Linear(4 * 2 * 2, 3))
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(4), nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        for bn in (self.bn1, self.bn2, self.bn3):
            _stats(bn)

    def forward(self, x):
        x = F.relu(self.bn1(self.c1(x)))
        x = F.relu(self.bn2(self.c2(x)))
        return self.fc(F.relu(self.bn3(self.c3(x))).flatten(1))


def test_reparametrized_weights_are_evaluated_once_and_folded():
    """A reparametrized weight is a plain parameter of its eval-mode value in the converter's copy: the batch norms
    behind fold into it (the pass failed on the parametrization before), the graph computes the model's outputs,
    and the user's model keeps its parametrizations and hooks."""
    from torch.nn.utils import parametrize

    model, x = Reparametrized().eval(), torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        want = model(x)  # run once first: the older hooks then hold the weight as a plain attribute
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=4))
    assert res.report.entry("fold_bn").counts == {"BatchNorm2d": 3}
    with torch.no_grad():
        torch.testing.assert_close(res.snn.ann_forward(x), want, **TOL)
    assert parametrize.is_parametrized(model.c1) and parametrize.is_parametrized(model.c3)
    assert len(model.c2._forward_pre_hooks) == 1 and len(model.fc._forward_pre_hooks) == 1
    with torch.no_grad():  # and it still runs: the copy's plain weights were not made by editing the shared class
        torch.testing.assert_close(model(x), want, rtol=0, atol=0)
    again = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("rate", timesteps=4))
    with torch.no_grad():
        torch.testing.assert_close(again.snn.ann_forward(x), want, **TOL)


@pytest.mark.parametrize("update", ["augmented", "assigned"])
def test_a_forward_that_assigns_its_own_buffer_is_refused_in_one_line(update):
    """self.n += 1 in forward (a call counter) assigned a tracing proxy to the copy's buffer: a pass failed later
    with "references nonexistent attribute"; now the trace names the buffer."""
    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.register_buffer("n", torch.zeros(()))

        def forward(self, x):
            if update == "augmented":
                self.n += 1
            else:
                self.n = self.n + 1
            return F.relu(self.fc(x)) * self.n

    model = Counting().eval()
    with pytest.raises(TraceError, match=r"Counting's forward assigns its own state \(n: e.g. self.n \+= 1"):
        convert(model, forward_loop=[torch.rand(4, 4)])
    assert float(model.n) == 0  # the user's model was not run


def test_detach_of_activations_is_converted_as_the_identity():
    """x.detach() in forward (it was listed as not convertible) changes no value: no site of its own."""
    class Detaching(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.c1, self.c2, self.fc = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(4 * 4 * 4, 3)

        def forward(self, x):
            h = F.relu(self.c1(x)).detach()
            return self.fc(F.relu(self.c2(h)).flatten(1).detach())

    model, x = Detaching().eval(), torch.rand(16, 1, 8, 8)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("rate", timesteps=256))
    assert res.snn.neuron_names == ["relu", "relu_1"]
    with torch.no_grad():
        want = model(x)
        assert float((res.snn(x)[-1] - want).abs().max()) < 0.02 * float(want.abs().max())


class _FramesFirst(nn.Module):
    """A clip model that runs its CNN on [F·B, ...] frames-first (x.transpose(0, 1)), or sequence-first tokens."""

    def __init__(self, layout: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layout = layout
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 4 * 4, 3)
        self.tokens, self.columns = nn.Linear(3 * 36, 16), nn.Parameter(torch.randn(64, 5 * 3 * 36) * 0.05)

    def forward(self, x):  # x: [B, F, 3, 6, 6]
        B, frames = x.shape[:2]
        if self.layout == "frames-first":
            h = F.relu(self.conv(x.transpose(0, 1).reshape(frames * B, 3, 6, 6))).view(frames, B, -1).mean(0)
        elif self.layout == "sequence-first":  # [F, B, C] tokens
            h = F.relu(self.tokens(x.flatten(2).transpose(0, 1))).transpose(0, 1).flatten(1)[:, :64]
        elif self.layout == "columns":  # one column per image
            h = F.relu(self.columns @ x.flatten(1).transpose(0, 1)).transpose(0, 1)
        else:  # batch-first, moved away and back between activations: per row, what the SNN needs
            h = F.relu(self.conv(x.flatten(0, 1)).transpose(0, 1).transpose(0, 1)).view(B, frames, -1).mean(1)
        return self.fc(h)


@pytest.mark.parametrize("layout", ["frames-first", "sequence-first", "columns"])
def test_a_neuron_reading_a_tensor_whose_first_dim_is_not_the_batch_is_refused(layout):
    """The SNN folds T into the batch dim; a neuron whose input has the images elsewhere (frames-first,
    sequence-first, W @ x.T) unfolded steps and images mixed: silently wrong in multi-step mode (0.035 against an
    ANN output of 0.1 at T = 64 on the frames-first model) or a shape error in internal words."""
    x = torch.rand(4, 5, 3, 6, 6)
    with pytest.raises(ConfigError, match=r"relu.* reads a tensor whose first dim is not the batch of images \(\[") \
            as info:
        convert(_FramesFirst(layout).eval(), forward_loop=[x], config=ConversionConfig.for_coding("rate", timesteps=4))
    assert "keep the batch first" in str(info.value)


def test_a_batch_moved_and_moved_back_between_neurons_converts():
    model, x = _FramesFirst("batch-first").eval(), torch.rand(4, 5, 3, 6, 6)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=64))
    with torch.no_grad():
        want = model(x)
        for mode in ("multi", "single"):
            assert float((res.snn(x, mode=mode)[-1] - want).abs().max()) < 0.02 * float(want.abs().max())


class _BoxDecode(nn.Module):
    """A DFL-like box decode (Ultralytics' dist2rbox): a product unit reads (rb - lt) / 2, a small difference of two
    nearly equal values around 7.5, batch-first throughout."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.conv = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 2 * 16, 3, padding=1)
        self.angle = nn.Conv2d(8, 1, 3, padding=1)
        self.register_buffer("bins", torch.arange(16.0).view(1, 1, 16, 1))
        with torch.no_grad():
            self.conv.weight.mul_(1e-3)  # a near-uniform softmax, as with random weights: rb - lt ~ 1e-3
            self.conv.bias.zero_()

    def forward(self, x):
        b = x.shape[0]
        x = torch.relu(self.stem(x))
        dist = (self.conv(x).flatten(2).view(b, 2, 16, -1).softmax(2) * self.bins).sum(2)  # [B, 2, N], ~7.5 each
        lt, rb = dist.split(1, dim=1)
        return torch.cat([(rb - lt) / 2 * torch.cos(torch.sigmoid(self.angle(x).flatten(2))), lt + rb], 1)


def test_rounding_of_a_small_difference_is_not_taken_for_a_moved_batch_dim():
    """One image alone and in a batch of two differ by fp32 rounding of the operands (~1e-6 on values ~2e-3): the
    layout check refused yolov8n-obb and yolo11n-obb for it; their rows are each image's own."""
    model = _BoxDecode().eval()
    x = torch.rand(32, 3, 32, 32)  # drawn right after the weights (seed 0): refused before
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=4))
    assert res.snn.input_shape == (3, 32, 32)
