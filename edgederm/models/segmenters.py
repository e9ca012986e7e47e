"""Lesion segmenters: ``mobilegan`` (ERFNet blocks + DANet attention, trained as a GAN generator) and ``tinyseg``.

Both output mask logits (N, 1, S, S) at the input size and use only ops that every converter
handles: convolutions (plain, factorised, depthwise), batch norm, ReLU, sigmoid/softmax, bmm,
reshape/permute, concat, add/mul and bilinear upsampling by a fixed factor of 2. No max-pooling,
no transposed convolutions and no size-dependent resizing, so a static-shape export is exact.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from ._registry import ModelEntry, register_model


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def _lesion_prior_head(head: nn.Conv2d, prior: float = 0.2) -> nn.Conv2d:
    # Start at the lesion share of a typical dermoscopy image (RetinaNet's prior init): the bias
    # need not crawl from 0 to about -1.4 before the masks take shape.
    nn.init.constant_(head.bias, math.log(prior / (1 - prior)))
    return head


def _upsample2(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class NonBottleneck1D(nn.Module):
    """ERFNet's non-bottleneck-1D block: (3x1, 1x3) twice, the second pair dilated, plus the input."""

    def __init__(self, channels: int, dilation: int = 1, dropout: float = 0.0):
        super().__init__()
        d = dilation
        self.conv3x1_1 = nn.Conv2d(channels, channels, (3, 1), padding=(1, 0))
        self.conv1x3_1 = nn.Conv2d(channels, channels, (1, 3), padding=(0, 1))
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv3x1_2 = nn.Conv2d(channels, channels, (3, 1), padding=(d, 0), dilation=(d, 1))
        self.conv1x3_2 = nn.Conv2d(channels, channels, (1, 3), padding=(0, d), dilation=(1, d))
        self.bn2 = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv3x1_1(x))
        y = self.relu(self.bn1(self.conv1x3_1(y)))
        y = self.relu(self.conv3x1_2(y))
        y = self.dropout(self.bn2(self.conv1x3_2(y)))
        return self.relu(y + x)


class PositionAttention(nn.Module):
    """DANet's position attention: every position attends to every other (an (HW, HW) softmax)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        inner = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))  # starts as the identity, as in DANet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        query = self.query(x).flatten(2).permute(0, 2, 1)  # (N, HW, C')
        key = self.key(x).flatten(2)  # (N, C', HW)
        attention = torch.softmax(torch.bmm(query, key), dim=-1)  # (N, HW, HW)
        value = self.value(x).flatten(2)  # (N, C, HW)
        out = torch.bmm(value, attention.permute(0, 2, 1)).reshape(-1, c, h, w)
        return self.gamma * out + x


class ChannelAttention(nn.Module):
    """DANet's channel attention: a (C, C) affinity of the channel maps, no convolutions."""

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        flat = x.flatten(2)  # (N, C, HW)
        energy = torch.bmm(flat, flat.permute(0, 2, 1))  # (N, C, C)
        # DANet takes softmax(rowmax - energy); softmax is shift-invariant per row, so that is
        # softmax(-energy) exactly, without a max-reduction op in the exported graph.
        attention = torch.softmax(energy * -1.0, dim=-1)
        out = torch.bmm(attention, flat).reshape(-1, c, h, w)
        return self.gamma * out + x


class DualAttention(nn.Module):
    """Position and channel attention in parallel, summed and fused by a 1x1 convolution (DANet's head)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.position = PositionAttention(channels, reduction)
        self.channel = ChannelAttention()
        self.fuse = _conv_bn_relu(channels, channels, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.position(x) + self.channel(x))


class MobileGAN(nn.Module):
    """The MobileGAN generator: ERFNet-style encoder, dual attention at 1/8, a light skip decoder.

    Encoder: 1/2 (16 ch), 1/4 (64 ch, 5 blocks), 1/8 (128 ch, 8 blocks dilated 2, 4, 8, 16 twice).
    Decoder: x2 upsampling added to the matching encoder features, two 1-D blocks per scale.
    """

    input_multiple = 8

    def __init__(self, num_classes: int = 1, dropout: float = 0.1):
        super().__init__()
        self.down1 = _conv_bn_relu(3, 16, stride=2)
        self.down2 = _conv_bn_relu(16, 64, stride=2)
        self.stage2 = nn.Sequential(*[NonBottleneck1D(64, 1, dropout / 3) for _ in range(5)])
        self.down3 = _conv_bn_relu(64, 128, stride=2)
        self.stage3 = nn.Sequential(*[NonBottleneck1D(128, d, dropout) for d in (2, 4, 8, 16, 2, 4, 8, 16)])
        self.attention = DualAttention(128)
        self.reduce3 = _conv_bn_relu(128, 64, kernel=1)
        self.decode2 = nn.Sequential(NonBottleneck1D(64), NonBottleneck1D(64))
        self.reduce2 = _conv_bn_relu(64, 16, kernel=1)
        self.decode1 = nn.Sequential(NonBottleneck1D(16), NonBottleneck1D(16))
        self.head = _lesion_prior_head(nn.Conv2d(16, num_classes, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.down1(x)
        f2 = self.stage2(self.down2(f1))
        f3 = self.attention(self.stage3(self.down3(f2)))
        y = self.decode2(_upsample2(self.reduce3(f3)) + f2)
        y = self.decode1(_upsample2(self.reduce2(y)) + f1)
        return self.head(_upsample2(y))


class SeparableBlock(nn.Module):
    """Depthwise 3x3 (optionally strided) then pointwise 1x1, each with BN + ReLU; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.depthwise = _conv_bn_relu(cin, cin, stride=stride, groups=cin)
        self.pointwise = _conv_bn_relu(cin, cout, kernel=1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise(self.depthwise(x))
        return y + x if self.residual else y


class TinySeg(nn.Module):
    """A ~0.05M-parameter U-Net (EGE-UNet's size class): separable convolutions, 5 halvings, dual attention at 1/32."""

    input_multiple = 32
    widths = (8, 16, 24, 32, 48, 64)

    def __init__(self, num_classes: int = 1):
        super().__init__()
        w = self.widths
        self.stem = _conv_bn_relu(3, w[0])
        self.encoders = nn.ModuleList(
            nn.Sequential(SeparableBlock(a, b, stride=2), SeparableBlock(b, b)) for a, b in zip(w, w[1:], strict=False)
        )
        self.attention = DualAttention(w[-1])
        # Decoder level i takes the upsampled level i+1 (width w[i+1]) concatenated with skip w[i].
        self.decoders = nn.ModuleList(SeparableBlock(w[i + 1] + w[i], w[i]) for i in range(len(w) - 1))
        self.head = _lesion_prior_head(nn.Conv2d(w[0], num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for encoder in self.encoders:
            skips.append(encoder(skips[-1]))
        y = self.attention(skips.pop())
        for decoder in reversed(self.decoders):
            y = decoder(torch.cat([_upsample2(y), skips.pop()], dim=1))
        return self.head(y)


class MaskDiscriminator(nn.Module):
    """The conditional PatchGAN critic of MobileGAN's training: (image, mask) -> a grid of real/fake logits.

    Used only during training (never exported), so it may use LeakyReLU freely.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 4
        for i, cout in enumerate(widths):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=i == 0)]
            if i > 0:
                layers += [nn.BatchNorm2d(cout)]
            layers += [nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        layers += [nn.Conv2d(cin, 1, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image, mask * 2 - 1], dim=1))


def _build(cls: type[nn.Module], num_classes: int) -> nn.Module:
    return cls(num_classes=num_classes)


register_model(
    ModelEntry(
        name="mobilegan",
        task="segmentation",
        family="segmenters",
        builder=partial(_build, MobileGAN),
        default_input_size=128,
        description="MobileGAN generator: ERFNet 1-D blocks + DANet position/channel attention, ~2.1M params",
        input_multiple=MobileGAN.input_multiple,
    )
)
register_model(
    ModelEntry(
        name="tinyseg",
        task="segmentation",
        family="segmenters",
        builder=partial(_build, TinySeg),
        default_input_size=128,
        description="tiny separable U-Net with dual attention (EGE-UNet size class), ~0.05M params",
        input_multiple=TinySeg.input_multiple,
    )
)
