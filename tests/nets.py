"""Tiny seeded models for tests: every ReLU spelling, bounded ReLUs, BN, max-pool, residual add, dropout."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SpellingsNet(nn.Module):
    """Conv-BN blocks using every ReLU spelling, a shared ReLU module, max-pools, dropout and a linear head."""

    def __init__(self, seed: int = 0, channels: int = 6) -> None:
        super().__init__()
        torch.manual_seed(seed)
        c = channels
        self.conv1, self.bn1 = nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv3, self.bn3 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv4 = nn.Conv2d(c, c, 3, padding=1)
        self.act_inplace = nn.ReLU(inplace=True)
        self.shared = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(0.3)
        self.fc1 = nn.Linear(c * 7 * 7, 16)
        self.fc2 = nn.Linear(16, 10)
        for bn in (self.bn1, self.bn2, self.bn3):  # non-trivial running statistics
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)

    def forward(self, x):
        x = self.pool(self.act_inplace(self.bn1(self.conv1(x))))  # nn.ReLU(inplace) -> MaxPool
        x = F.relu(self.bn2(self.conv2(x)))  # F.relu
        x = torch.relu(self.bn3(self.conv3(x))) + x  # torch.relu, residual
        x = self.pool(self.conv4(x).relu())  # Tensor.relu -> max-pool
        x = self.shared(torch.flatten(x, 1))  # shared nn.ReLU, first use
        x = self.drop(self.shared(self.fc1(x)))  # shared nn.ReLU, second use
        return self.fc2(x)


class ClipNet(nn.Module):
    """Three bounded-ReLU spellings whose ceilings the activations exceed (so the upper neurons fire), a plain ReLU,
    a residual add and a max-pool. ``bounds``: the Hardtanh and clamp ceilings."""

    def __init__(self, side: int = 28, bounds: tuple[float, float] = (1.5, 2.0)) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.bounds = bounds
        self.conv1 = nn.Conv2d(1, 5, 3, padding=1)
        self.conv2 = nn.Conv2d(5, 5, 3, padding=1)
        self.conv3 = nn.Conv2d(5, 5, 3, padding=1)
        self.conv4 = nn.Conv2d(5, 4, 3, padding=1)
        self.act6 = nn.ReLU6()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * (side // 2) ** 2, 10)
        with torch.no_grad():
            self.conv1.weight.mul_(12.0)  # pre-activations well above 6

    def forward(self, x):
        x = self.act6(self.conv1(x))
        x = F.hardtanh(self.conv2(x), 0.0, self.bounds[0]) + x
        x = self.pool(torch.clamp(self.conv3(x), 0, self.bounds[1]))
        x = F.relu(self.conv4(x))
        return self.fc(torch.flatten(x, 1))


class FunctionalPoolNet(nn.Module):
    """Functional max-pools: one right after a ReLU (moved before it), one after a spiking layer (a graded unit
    around ``F.max_pool2d``, whose closure pickle cannot store by itself)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(9)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(self.conv2(F.relu(x)), kernel_size=2)
        return self.fc(F.relu(x).flatten(1))


class Unsupported(nn.Module):
    """Three unsupported nodes: a sort, a cumulative sum and fused attention with dropout (non-ReLU activations,
    element-wise and matrix products are supported as graded units; fused attention without dropout is written
    out, masks included)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        y = torch.sort(F.relu(self.conv(x)), dim=1)[0]
        y = torch.cumsum(y, 2).flatten(2)
        return self.fc(F.scaled_dot_product_attention(y, y, y, dropout_p=0.5).mean(2))


class _SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

    def forward(self, x):
        w = F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))
        return x * F.hardsigmoid(self.fc2(w))


class GatedNet(nn.Module):
    """An analog SiLU stem, in-place Hardswish, a squeeze-and-excitation gate (product), sigmoid, LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.stem_act = nn.SiLU(inplace=True)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.act = nn.Hardswish(inplace=True)
        self.se = _SE(8)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem_act(self.stem(x))  # upstream of every neuron: stays plain
        x = F.relu(self.conv1(x))
        x = self.se(self.act(self.conv2(x)))
        x = torch.sigmoid(x) + x
        return self.fc(self.norm(x.mean((2, 3))))


class TinyViT(nn.Module):
    """A one-block pre-LN transformer on 4x4 patches of a 12x12 image: LayerNorm, attention written out with
    matmuls and softmax (two heads), a GELU MLP, a class-token-free mean-pooled linear head."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.heads = heads
        self.embed = nn.Conv2d(1, dim, 4, stride=4)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def _split(self, x):
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)  # [B, 9, dim]
        h = self.norm1(x)
        q, k, v = self._split(self.q(h)), self._split(self.k(h)), self._split(self.v(h))
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * 0.5, dim=-1)
        x = x + self.proj(torch.matmul(attn, v).transpose(1, 2).flatten(2))
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))


class HeadsNet(nn.Module):
    """Several outputs: a dict of class scores, a box head behind a ReLU and a (nested) tuple with a linear head on
    the input and a None. ``linear=True`` drops the ReLUs of the trunk (a network without neurons but the box
    head's)."""

    def __init__(self, linear: bool = False) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.linear = linear
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.cls = nn.Linear(4 * 14 * 14, 10)
        self.box = nn.Conv2d(4, 2, 1)
        self.skip = nn.Linear(28 * 28, 3)
        with torch.no_grad():
            self.box.bias.fill_(0.1)  # the box head's ReLU is active

    def forward(self, x):
        act = (lambda v: v) if self.linear else F.relu
        f = self.pool(act(self.conv1(x)))
        f = act(self.conv2(f))
        return {"cls": self.cls(torch.flatten(f, 1)), "box": self.box(f).relu(),
                "extra": (self.skip(torch.flatten(x, 1)), None)}


class ClsHead(HeadsNet):
    """``HeadsNet`` returning its class scores only (the same weights)."""

    def forward(self, x):
        return super().forward(x)["cls"]


class SegNet(nn.Module):
    """A small fully convolutional segmentation network: per-pixel scores ``[B, 4, H, W]`` for ``[B, 1, H, W]``
    inputs (conv, ReLU, max-pool, conv, ReLU, 1x1 classifier, bilinear upsampling back to the input size)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.classifier = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.relu(self.conv2(h))
        return F.interpolate(self.classifier(h), size=x.shape[-2:], mode="bilinear", align_corners=False)


class SegNetLowRes(SegNet):
    """``SegNet`` without the upsampling: scores at half the input resolution."""

    def forward(self, x):
        return self.classifier(F.relu(self.conv2(F.max_pool2d(F.relu(self.conv1(x)), 2))))


class BoxNet(nn.Module):
    """A small regression CNN: four values per ``[B, 1, H, W]`` image (conv, ReLU, max-pool, conv, ReLU, global
    average pool, linear)."""

    def __init__(self, outputs: int = 4) -> None:
        super().__init__()
        torch.manual_seed(13)
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.head = nn.Linear(8, outputs)

    def forward(self, x):
        h = F.relu(self.conv2(F.max_pool2d(F.relu(self.conv1(x)), 2)))
        return self.head(h.mean((2, 3)))


class ScalarNet(BoxNet):
    """``BoxNet`` with one output, ``[B, 1]``."""

    def __init__(self) -> None:
        super().__init__(outputs=1)


class _CBS(nn.Module):
    """Conv-BN-SiLU (Ultralytics' ``Conv``)."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class _C2f(nn.Module):
    """Ultralytics' C2f as it is written: ``y = list(self.cv1(x).chunk(2, 1))``, then ``y.extend(...)`` in a loop."""

    def __init__(self, c_in: int, c_out: int, n: int = 1) -> None:
        super().__init__()
        self.c = c_out // 2
        self.cv1, self.cv2 = _CBS(c_in, 2 * self.c), _CBS((2 + n) * self.c, c_out)
        self.m = nn.ModuleList(nn.Sequential(_CBS(self.c, self.c, 3), _CBS(self.c, self.c, 3)) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(y[-1] + m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class YoloNet(nn.Module):
    """A small YOLOv8-style detector on ``[B, 1, 32, 32]``: C2f blocks, SPPF (three chained 5×5 max-pools), an FPN
    with nearest upsampling and concatenation, and two heads whose ``[B, A·(5+C), H, W]`` maps are reshaped by
    traced sizes (``B, _, H, W = y.shape``), permuted and concatenated to ``[B, boxes, 5+C]``, the box centres
    decoded on a grid built from ``torch.arange`` of traced sizes; a NamedTuple output (boxes, scores)."""

    Out = __import__("collections").namedtuple("Out", "boxes scores")

    def __init__(self, classes: int = 3, anchors: int = 2) -> None:
        super().__init__()
        torch.manual_seed(14)
        self.no, self.na = 5 + classes, anchors
        self.stem, self.d1, self.c1 = _CBS(1, 8, 3, 2), _CBS(8, 16, 3, 2), _C2f(16, 16)  # /4
        self.d2, self.c2 = _CBS(16, 32, 3, 2), _C2f(32, 32)  # /8
        self.cv_sppf, self.pool, self.sppf = _CBS(32, 16), nn.MaxPool2d(5, 1, 2), _CBS(64, 32)
        self.fpn = _C2f(32 + 16, 16)
        self.heads = nn.ModuleList(nn.Conv2d(c, anchors * self.no, 1) for c in (16, 32))
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        p4 = self.c1(self.d1(self.stem(x)))
        p8 = self.c2(self.d2(p4))
        s = self.cv_sppf(p8)
        y1 = self.pool(s)
        y2 = self.pool(y1)
        p8 = self.sppf(torch.cat([s, y1, y2, self.pool(y2)], 1))
        p4 = self.fpn(torch.cat([F.interpolate(p8, scale_factor=2, mode="nearest"), p4], 1))
        boxes, scores = [], []
        for i, f in enumerate((p4, p8)):
            y = self.heads[i](f)
            B, _, H, W = y.shape
            y = y.view(B, self.na, self.no, H, W).permute(0, 1, 3, 4, 2).reshape(B, -1, self.no)
            gy, gx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
            grid = torch.stack([gx, gy], -1).reshape(1, 1, H * W, 2).expand(1, self.na, -1, -1).reshape(1, -1, 2)
            boxes.append(torch.cat([(y[..., :2].sigmoid() + grid) * (4 << i), y[..., 2:4]], -1))
            scores.append(y[..., 4:].sigmoid())
        return self.Out(torch.cat(boxes, 1), torch.cat(scores, 1))


class AnchorCacheNet(nn.Module):
    """A head that caches a grid built for the input's shape, batch dim included, as Ultralytics' ``Detect`` keeps
    its anchors (``if self.shape != shape: rebuild``): a fresh model traces (the grid is rebuilt for every batch
    size), one called beforehand with another batch size takes the branch one way for one size and the other way
    for the other."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(15)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.shape, self.grid = None, None

    def forward(self, x):
        y = F.relu(self.conv(x))
        if self.shape != y.shape:
            self.grid = torch.arange(y.shape[-1], dtype=y.dtype) / y.shape[-1]
            self.shape = y.shape
        return (y + self.grid).mean((2, 3))
