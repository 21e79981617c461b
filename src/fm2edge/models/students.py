"""Small students for native-resolution (32 px) inputs, the edge end of the lifecycle."""

from __future__ import annotations

from torch import nn

from fm2edge.config import ModelConfig
from fm2edge.models.classifier import Classifier
from fm2edge.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from fm2edge.models.registry import register

NATIVE = Preprocess(size=32, crop_pct=1.0, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear")


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Sequential):
    """Three conv-conv-pool stages and global average pooling (an airbench-style net, ~0.3 M parameters)."""

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128)) -> None:
        layers: list[nn.Module] = []
        cin = 3
        for w in widths:
            layers += _conv_bn(cin, w) + _conv_bn(w, w) + [nn.MaxPool2d(2)]
            cin = w
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)
        self.out_dim = widths[-1]


@register("student:small_cnn", "3-stage CNN for 32 px inputs, ~0.29 M parameters", "student")
def small_cnn(rest: str, cfg: ModelConfig, num_classes: int) -> Classifier:
    net = SmallCNN()
    return Classifier(net, net.out_dim, num_classes, NATIVE, "student:small_cnn")


@register("student:cifar_resnet18", "ResNet-18 with a 3x3 stride-1 stem and no max-pool, for 32 px inputs (11 M)",
          "student")
def cifar_resnet18(rest: str, cfg: ModelConfig, num_classes: int) -> Classifier:
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    # The ImageNet stem (7x7 stride 2 + max-pool) shrinks 32 px inputs to 8 px before the first block.
    net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return Classifier(net, 512, num_classes, NATIVE, "student:cifar_resnet18")
