"""Fashion-MNIST architectures of the model zoo: VGG, ResNet, MobileNet, MobileNetV3 and a tiny ViT.

Every network takes raw images ``[B, 1, 28, 28]`` in [0, 1] (no normalisation) and returns logits ``[B, 10]``.
They are plain PyTorch, traceable by ``torch.fx`` and exportable to ONNX, and each one exercises a different part
of the converter on purpose:

- ``FmnistVGG``: ``nn.ReLU`` modules (one ``inplace=True``), ``MaxPool2d`` right after a ReLU, ``Dropout``.
- ``FmnistResNet``: residual adds followed by functional ``F.relu`` / ``torch.relu``, 1x1 conv shortcuts.
- ``FmnistMobileNet``: depthwise convolutions (``groups=channels``) with ``nn.ReLU6``.
- ``FmnistMobileNetV3``: Hardswish (in place in the stem), squeeze-and-excitation gates (Hardsigmoid times the
  feature map), inverted residuals: non-ReLU activations and products as graded units.
- ``FmnistViT``: explicit attention (``q @ k^T`` and ``softmax`` as plain torch ops, no SDPA), GELU, LayerNorm.

Initialisation is seeded: each factory builds its model under a forked RNG seeded with ``seed``, so the same seed
gives the same initial weights without touching the caller's global RNG state.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 10


def _init_cnn(model: nn.Module) -> None:
    """Kaiming-normal convolutions, unit/zero BatchNorm, default-scaled linear layers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _conv_bn_relu(c_in: int, c_out: int, *, inplace: bool = False) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=inplace)]


# ---------------------------------------------------------------------------------------------------------------
# VGG
# ---------------------------------------------------------------------------------------------------------------
class FmnistVGG(nn.Module):
    """VGG-style CNN: [conv-BN-ReLU]x2 → pool → [conv-BN-ReLU]x2 → pool → conv-BN-ReLU → pool → MLP head.

    Spatial sizes 28 → 14 → 7 → 3. Each ``MaxPool2d`` follows a ``ReLU`` directly.
    """

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), hidden: int = 256, dropout: float = 0.3) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.features = nn.Sequential(
            *_conv_bn_relu(1, w1, inplace=True),
            *_conv_bn_relu(w1, w1),
            nn.MaxPool2d(2),
            *_conv_bn_relu(w1, w2),
            *_conv_bn_relu(w2, w2),
            nn.MaxPool2d(2),
            *_conv_bn_relu(w2, w3),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(w3 * 3 * 3, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# ---------------------------------------------------------------------------------------------------------------
# ResNet
# ---------------------------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut; ``F.relu`` after the residual add.

    The shortcut is the identity, or a 1x1 conv + BN when the stride or the width changes.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class FmnistResNet(nn.Module):
    """Small ResNet: stem conv-BN-ReLU-maxpool (28 → 14), stages at 14, 7 and 4 pixels, global average pool.

    The stages are ``widths[0]`` (stride 1), ``widths[1]`` (stride 2) and ``widths[2]`` (stride 2), each
    ``blocks`` BasicBlocks deep; the first block of a strided stage has a 1x1 conv + BN shortcut.
    """

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), blocks: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]))
        self.pool = nn.MaxPool2d(2)
        layers: list[nn.Module] = []
        c_in = widths[0]
        for i, c_out in enumerate(widths):
            for j in range(blocks):
                layers.append(BasicBlock(c_in, c_out, stride=2 if (i > 0 and j == 0) else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.stem(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------------------------------------------------------
# MobileNet
# ---------------------------------------------------------------------------------------------------------------
class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 conv-BN-ReLU6 (``groups=c_in``), then pointwise 1x1 conv-BN-ReLU6."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Sequential(
            nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU6(inplace=True),
        )
        self.pointwise = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU6())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class FmnistMobileNet(nn.Module):
    """MobileNet-v1-style network: conv stem, depthwise-separable blocks, global average pool, linear head.

    ``blocks`` lists ``(c_out, stride)`` per depthwise-separable block; spatial sizes 28 → 14 → 7.
    """

    DEFAULT_BLOCKS = ((64, 2), (128, 1), (128, 2), (256, 1), (256, 1))

    def __init__(self, stem: int = 32, blocks: tuple[tuple[int, int], ...] = DEFAULT_BLOCKS) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6())
        layers: list[nn.Module] = []
        c_in = stem
        for c_out, stride in blocks:
            layers.append(DepthwiseSeparable(c_in, c_out, stride))
            c_in = c_out
        self.blocks = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------------------------------------------------------
# MobileNetV3
# ---------------------------------------------------------------------------------------------------------------
class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation gate: global average → 1x1 conv → ReLU → 1x1 conv → Hardsigmoid, times the input."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(scale))))
        return x * scale


class InvertedResidual(nn.Module):
    """MobileNetV3 block: 1x1 expansion (skipped when ``expand == c_in``), depthwise ``k`` x ``k`` conv, optional
    squeeze-and-excitation, linear 1x1 projection; residual add when shapes allow. ``act``: ReLU or Hardswish."""

    def __init__(self, c_in: int, expand: int, c_out: int, k: int, se: bool, act: str, stride: int) -> None:
        super().__init__()
        make_act = {"relu": nn.ReLU, "hswish": nn.Hardswish}[act]
        layers: list[nn.Module] = []
        if expand != c_in:
            layers += [nn.Conv2d(c_in, expand, 1, bias=False), nn.BatchNorm2d(expand), make_act()]
        layers += [nn.Conv2d(expand, expand, k, stride=stride, padding=k // 2, groups=expand, bias=False),
                   nn.BatchNorm2d(expand), make_act()]
        if se:
            layers.append(SqueezeExcite(expand, max(8, expand // 4)))
        layers += [nn.Conv2d(expand, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.residual else out


class FmnistMobileNetV3(nn.Module):
    """MobileNetV3-small-style network: Hardswish stem, inverted residual blocks with ReLU (early) and Hardswish
    (late) activations and squeeze-and-excitation gates, 1x1 Hardswish head conv, global average pool, two-layer
    Hardswish classifier. Spatial sizes 28 → 14 → 7.

    ``blocks`` lists ``(expand, c_out, kernel, se, act, stride)`` per block.
    """

    DEFAULT_BLOCKS = (
        (16, 16, 3, True, "relu", 2),
        (64, 24, 3, False, "relu", 1),
        (72, 24, 3, False, "relu", 1),
        (96, 40, 5, True, "hswish", 2),
        (120, 40, 5, True, "hswish", 1),
        (120, 48, 5, True, "hswish", 1),
    )

    def __init__(self, stem: int = 16, blocks: tuple = DEFAULT_BLOCKS, head: int = 192, hidden: int = 128) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem),
                                  nn.Hardswish(inplace=True))
        layers: list[nn.Module] = []
        c_in = stem
        for expand, c_out, k, se, act, stride in blocks:
            layers.append(InvertedResidual(c_in, expand, c_out, k, se, act, stride))
            c_in = c_out
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Conv2d(c_in, head, 1, bias=False), nn.BatchNorm2d(head), nn.Hardswish())
        self.classifier = nn.Sequential(nn.Linear(head, hidden), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(hidden, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------------------------------------------------------
# ViT
# ---------------------------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention written out: ``softmax(q k^T / sqrt(d)) v`` with separate q/k/v projections.

    Only ``Linear``, ``unflatten``/``transpose``/``flatten``, ``matmul``, ``mul`` and ``softmax`` are used, so
    ``torch.fx`` traces it and the converter sees every matmul; there is no ``scaled_dot_product_attention``.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention: dim {dim} is not divisible by heads {heads}; pick a divisor")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # [B, N, D] -> [B, H, N, D/H]
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)  # [B, H, N, N]
        out = torch.matmul(attn, v).transpose(1, 2).flatten(2)  # [B, N, D]
        return self.proj(out)


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x + attn(LN(x))`` then ``x + MLP(LN(x))`` with a GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class FmnistViT(nn.Module):
    """Tiny ViT: conv patch embedding (``patch`` x ``patch``, stride ``patch``), class token, learned position
    embeddings, ``depth`` pre-LN blocks, final LayerNorm, linear head on the class token.
    """

    def __init__(self, patch: int = 4, dim: int = 64, depth: int = 6, heads: int = 4, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if 28 % patch:
            raise ValueError(f"vit: patch {patch} does not divide 28; use 4, 7 or 14")
        n_patches = (28 // patch) ** 2
        self.patch_embed = nn.Conv2d(1, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, dim))
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, NUM_CLASSES)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        fan_in = self.patch_embed.in_channels * self.patch_embed.kernel_size[0] * self.patch_embed.kernel_size[1]
        nn.init.trunc_normal_(self.patch_embed.weight, std=math.sqrt(1.0 / fan_in))
        nn.init.zeros_(self.patch_embed.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, D]
        cls = self.cls_token.expand(x.size(0), -1, -1)  # [B, 1, D]
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


# ---------------------------------------------------------------------------------------------------------------
# Seeded factories (what the registry calls)
# ---------------------------------------------------------------------------------------------------------------
def _seeded(build, seed: int) -> nn.Module:
    """Build a model under a forked CPU RNG seeded with ``seed`` (the caller's RNG state is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _build_cnn(cls) -> nn.Module:
    model = cls()
    _init_cnn(model)
    return model


def fmnist_vgg(seed: int = 0) -> FmnistVGG:
    """VGG-style CNN with 32-64-128 channels (0.44 M parameters, 22 M MACs per image)."""
    return _seeded(lambda: _build_cnn(FmnistVGG), seed)


def fmnist_resnet(seed: int = 0) -> FmnistResNet:
    """ResNet with one BasicBlock per stage at 32-64-128 channels (0.31 M parameters, 10 M MACs per image)."""
    return _seeded(lambda: _build_cnn(FmnistResNet), seed)


def fmnist_mobilenet(seed: int = 0) -> FmnistMobileNet:
    """MobileNet-v1-style network with ReLU6 and depthwise-separable blocks."""
    return _seeded(lambda: _build_cnn(FmnistMobileNet), seed)


def fmnist_mnv3(seed: int = 0) -> FmnistMobileNetV3:
    """MobileNetV3-small-style network: Hardswish, squeeze-and-excitation gates, inverted residuals."""
    return _seeded(lambda: _build_cnn(FmnistMobileNetV3), seed)


def fmnist_vit(seed: int = 0) -> FmnistViT:
    """Tiny ViT: patch 4 (7x7 = 49 tokens + class token), dim 64, depth 6, 4 heads, MLP ratio 2 (0.21 M parameters)."""
    return _seeded(FmnistViT, seed)
