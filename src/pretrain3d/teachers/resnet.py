"""ResNet-50 (bottleneck, v1.5: stride on the 3x3 conv) with torchvision's state-dict names.

Names: ``conv1``, ``bn1``, ``layer{1..4}.{i}.{conv1,bn1,conv2,bn2,conv3,bn3}``,
``layer{1..4}.0.downsample.{0,1}``, ``fc`` — so ``torchvision.models.resnet50`` checkpoints load
strictly. The teacher returns one stage's feature map (PPKT uses layer4):

    layer1: 256-d, stride 4   layer2: 512-d, stride 8   layer3: 1024-d, stride 16   layer4: 2048-d, stride 32

Default weights: torchvision's IMAGENET1K_V1 (the original supervised ImageNet ResNet-50, 76.13 %
top-1; PPKT predates the V2 recipe), ImageNet mean/std normalisation.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pretrain3d.teachers.base import IMAGENET_MEAN, IMAGENET_STD, Teacher

RESNET50_IMAGENET1K_V1_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
RESNET50_IMAGENET1K_V2_URL = "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"

STAGES = {"layer1": (256, 4), "layer2": (512, 8), "layer3": (1024, 16), "layer4": (2048, 32)}


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * 4, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4))
        mods = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        mods += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward_stage(self, x: torch.Tensor, stage: str = "layer4") -> torch.Tensor:
        """The output of ``stage`` (layer1..layer4); later stages are not computed."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            if name == stage:
                return x
        raise ValueError(f"unknown ResNet stage {stage!r}; valid: {sorted(STAGES)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_stage(x, "layer4")), 1))


def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet((3, 4, 6, 3), num_classes)


def resolve_stage(layer: str) -> str:
    s = str(layer).strip().lower()
    if s == "last":
        return "layer4"
    if s.isdigit() and f"layer{s}" in STAGES:
        return f"layer{s}"
    if s not in STAGES:
        raise ValueError(f"ResNet layer must be one of {sorted(STAGES)} or 'last', got {layer!r}")
    return s


class ResNetTeacher(Teacher):
    """One stage of a ResNet-50 as a (B, C, ceil(H/stride), ceil(W/stride)) feature map."""

    def __init__(self, name: str = "resnet50_imagenet", layer: str = "layer4",
                 input_size: Sequence[int] = (160, 224),
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        stage = resolve_stage(layer)
        dim, stride = STAGES[stage]
        super().__init__(name, stage, dim, stride, input_size, mean, std)
        self.net = resnet50()

    @property
    def cell_offset(self) -> float:
        # Padded convolutions (k7 s2 p3, k3 s2 p1, k3 s2 p1, k1 s2): output j is centred on input 2j
        # at every stride-2 step, so cell i sits at stride * i (measured: the |grad| centroid of
        # layer4 cell 3 at 224 x 224 is at ~96 px, not the patch convention's 111.5).
        return 0.0

    @property
    def feature_size(self) -> tuple[int, int]:
        # every stride-2 step (7x7/s2 conv, 3x3/s2 max-pool, 3x3/s2 conv) maps n → ceil(n/2)
        def down(n: int) -> int:
            for _ in range(self.stride.bit_length() - 1):
                n = -(-n // 2)
            return n

        return down(self.input_size[0]), down(self.input_size[1])

    def load_net_state_dict(self, sd: dict, strict: bool = True):
        return self.net.load_state_dict(sd, strict=strict)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_stage(x, self.layer)
