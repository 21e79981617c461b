"""TensorFlow-style "same" padding fixed for the export's input size: identical outputs, no shape arithmetic left."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fm2edge.models.static import FixedPad, with_fixed_padding

timm = pytest.importorskip("timm")


def same_layers() -> nn.Module:
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame

    torch.manual_seed(0)
    return nn.Sequential(Conv2dSame(3, 4, 3, stride=2), nn.ReLU(), MaxPool2dSame(3, stride=2),
                         Conv2dSame(4, 4, 5, stride=2, dilation=1, groups=4), AvgPool2dSame(2, stride=2)).eval()


@pytest.mark.parametrize("size", [37, (40, 29)])
def test_fixed_padding_gives_the_same_outputs_at_its_size_and_leaves_the_model_alone(size):
    model = same_layers()
    fixed = with_fixed_padding(model, size)
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        assert torch.allclose(fixed(x), model(x), atol=1e-6)
    assert sum(isinstance(m, FixedPad) for m in fixed.modules()) == 4
    assert not any(isinstance(m, FixedPad) for m in model.modules())  # a copy was changed, not the model
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    assert with_fixed_padding(plain, 32) is plain  # nothing to fix: no copy


def test_an_exported_tf_style_backbone_has_no_shape_arithmetic_and_matches_pytorch(tmp_path):
    import onnx

    from fm2edge.export import export_onnx, open_session, run_session

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3).eval()
    x = torch.randn(2, 3, 72, 72)
    path = export_onnx(model, x, tmp_path / "lite0.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"Shape", "Ceil", "Gather"}, ops
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run_session(open_session(path), x), expected, atol=1e-4)
