"""Small students for edge inputs: designed at 32 px, with a stem that downsamples larger inputs so that a student
at 64-128 px costs about what it costs at 32 px (and holds as little memory)."""

from __future__ import annotations

from torch import nn

from fm2edge.config import ModelConfig
from fm2edge.models.classifier import Classifier
from fm2edge.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from fm2edge.models.registry import register

NATIVE = Preprocess(size=32, crop_pct=1.0, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear")


def stem_stride(cfg: ModelConfig) -> int:
    """The first convolution's stride: the config's, else sized to the input (1 up to 48 px, 2 up to 96, else 4)."""
    if cfg.stem_stride is not None:
        return cfg.stem_stride
    size = cfg.image_size or NATIVE.size
    return 1 if size <= 48 else 2 if size <= 96 else 4


def stem_conv(cin: int, cout: int, stride: int) -> nn.Conv2d:
    """3x3 at stride 1 or 2; a 7x7 at stride 4 (ResNet's stem kernel: every input pixel is seen)."""
    kernel = 7 if stride == 4 else 3
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [stem_conv(cin, cout, stride), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Sequential):
    """Three conv-conv-pool stages and global average pooling (an airbench-style net, ~0.3 M parameters); the first
    convolution strides by ``stem_stride`` for inputs larger than 32 px."""

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), stem_stride: int = 1) -> None:
        layers: list[nn.Module] = []
        cin = 3
        for i, w in enumerate(widths):
            layers += _conv_bn(cin, w, stem_stride if i == 0 else 1) + _conv_bn(w, w) + [nn.MaxPool2d(2)]
            cin = w
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)
        self.out_dim = widths[-1]
        self.build_options = {"stem_stride": stem_stride}  # saved in model.json: what rebuilds this network


@register("student:small_cnn", "3-stage CNN designed at 32 px, ~0.29 M parameters; larger inputs get a "
          "downsampling stem", "student")
def small_cnn(rest: str, cfg: ModelConfig, num_classes: int) -> Classifier:
    net = SmallCNN(stem_stride=stem_stride(cfg))
    return Classifier(net, net.out_dim, num_classes, NATIVE, "student:small_cnn")


@register("student:cifar_resnet18", "ResNet-18 with a 3x3 stride-1 stem and no max-pool, for 32 px inputs (11 M); "
          "larger inputs get a downsampling stem", "student")
def cifar_resnet18(rest: str, cfg: ModelConfig, num_classes: int) -> Classifier:
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    # The ImageNet stem (7x7 stride 2 + max-pool) shrinks 32 px inputs to 8 px before the first block.
    stride = stem_stride(cfg)
    net.conv1 = stem_conv(3, 64, stride)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    net.build_options = {"stem_stride": stride}
    return Classifier(net, 512, num_classes, NATIVE, "student:cifar_resnet18")
