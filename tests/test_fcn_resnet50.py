"""FCN-ResNet50 (torchvision layout) against a PyTorch build of the published layer list, written
here (torchvision is not installed), with the same random weights; the importer maps every tensor
of a torch-saved state dict whose names follow torchvision's fcn_resnet50."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dakpn_jax.models import fcn_resnet50, segmenter

torch = pytest.importorskip("torch")
tnn = torch.nn
F = torch.nn.functional


class TBottleneck(tnn.Module):
    def __init__(self, cin, width, stride=1, dilation=1):
        super().__init__()
        self.conv1, self.bn1 = tnn.Conv2d(cin, width, 1, bias=False), tnn.BatchNorm2d(width)
        self.conv2 = tnn.Conv2d(
            width, width, 3, stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = tnn.BatchNorm2d(width)
        self.conv3, self.bn3 = (
            tnn.Conv2d(width, 4 * width, 1, bias=False),
            tnn.BatchNorm2d(4 * width),
        )
        self.downsample = None
        if stride != 1 or cin != 4 * width:
            self.downsample = tnn.Sequential(
                tnn.Conv2d(cin, 4 * width, 1, stride, bias=False), tnn.BatchNorm2d(4 * width)
            )

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return F.relu(h + (x if self.downsample is None else self.downsample(x)))


class TBackbone(tnn.Module):
    """ResNet-50 with replace_stride_with_dilation=[False, True, True] (torchvision's FCN backbone)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False), tnn.BatchNorm2d(64)
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        self.layer1 = tnn.Sequential(
            TBottleneck(64, 64), TBottleneck(256, 64), TBottleneck(256, 64)
        )
        self.layer2 = tnn.Sequential(
            TBottleneck(256, 128, 2), *[TBottleneck(512, 128) for _ in range(3)]
        )
        self.layer3 = tnn.Sequential(
            TBottleneck(512, 256, 1, 1), *[TBottleneck(1024, 256, 1, 2) for _ in range(5)]
        )
        self.layer4 = tnn.Sequential(
            TBottleneck(1024, 512, 1, 2), *[TBottleneck(2048, 512, 1, 4) for _ in range(2)]
        )

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        mid = self.layer3(self.layer2(self.layer1(x)))
        return mid, self.layer4(mid)


def t_head(cin, c):
    return tnn.Sequential(
        tnn.Conv2d(cin, cin // 4, 3, padding=1, bias=False),
        tnn.BatchNorm2d(cin // 4),
        tnn.ReLU(),
        tnn.Dropout(0.1),
        tnn.Conv2d(cin // 4, c, 1),
    )


class TFCN(tnn.Module):
    def __init__(self, c):
        super().__init__()
        self.backbone, self.classifier, self.aux_classifier = (
            TBackbone(),
            t_head(2048, c),
            t_head(1024, c),
        )

    def forward(self, x):
        size = x.shape[-2:]
        mid, out = self.backbone(x)
        up = lambda z: F.interpolate(z, size=size, mode="bilinear", align_corners=False)
        return up(self.classifier(out)), up(self.aux_classifier(mid))


@pytest.fixture(scope="module")
def torch_fcn():
    torch.manual_seed(0)
    net = TFCN(5)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        for m in net.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return net.eval()


def test_logits_equal_pytorch_build_and_importer_maps_every_tensor(torch_fcn, tmp_path):
    path = tmp_path / "fcn.pth"
    torch.save(torch_fcn.state_dict(), path)
    sd = torch_fcn.state_dict()
    assert (
        "backbone.layer1.0.conv1.weight" in sd
        and "classifier.4.bias" in sd
        and "aux_classifier.0.weight" in sd
    )

    model = fcn_resnet50.FCNResNet50(5, aux=True, rngs=nnx.Rngs(0))
    report = fcn_resnet50.load_state_dict(
        model, fcn_resnet50.read_state_dict(str(path)), source=str(path)
    )
    expected = sorted(k for k in sd if not k.endswith("num_batches_tracked"))
    assert report["loaded"] == expected and report["skipped"] == []

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
    xn = (x - fcn_resnet50.IMAGENET_MEAN) / fcn_resnet50.IMAGENET_STD
    with torch.no_grad():
        want, want_aux = (
            t.numpy().transpose(0, 2, 3, 1)
            for t in torch_fcn(torch.from_numpy(xn.transpose(0, 3, 1, 2)))
        )
    gd, state = nnx.split(model)
    got, got_aux = jax.jit(lambda s, v: nnx.merge(gd, s).forward_with_aux(v))(state, jnp.asarray(x))
    assert got.shape == want.shape == (1, 64, 64, 5)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(got_aux), want_aux, rtol=1e-4, atol=1e-4)

    # As a registered segmenter from the same file: no aux head (its tensors are skipped), the same
    # weights (a second ResNet-50 compile would double the test time; the forward is the one above).
    seg = segmenter.make_segmenter(
        "fcn_resnet50", 5, rngs=nnx.Rngs(1), weights=str(path), normalize=False
    )
    assert seg.aux_classifier is None and not seg.normalize
    for k, (var, _) in fcn_resnet50.torch_entries(seg).items():
        np.testing.assert_array_equal(
            np.asarray(var[...]), np.asarray(fcn_resnet50.torch_entries(model)[k][0][...])
        )


def test_importer_lists_mismatched_missing_unexpected(torch_fcn, tmp_path):
    sd = {k: v.numpy() for k, v in torch_fcn.state_dict().items()}
    model = fcn_resnet50.FCNResNet50(
        7, aux=False, rngs=nnx.Rngs(0)
    )  # 7 classes: classifier.4 mismatches
    bad = dict(sd)
    bad.pop("backbone.layer2.1.bn2.running_var")
    bad["backbone.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as e:
        fcn_resnet50.load_state_dict(model, bad, source="x.pth")
    msg = str(e.value)
    assert (
        "x.pth" in msg
        and "backbone.layer2.1.bn2.running_var" in msg
        and "backbone.extra.weight" in msg
    )
    assert "classifier.4.weight: file (5, 512, 1, 1) vs model (7, 512, 1, 1)" in msg
    # Fine-tuning to another label set: the class-count dependent convs stay at init.
    report = fcn_resnet50.load_state_dict(model, sd, load_classifier=False)
    assert (
        "classifier.4.weight" in report["skipped"]
        and "aux_classifier.0.weight" in report["skipped"]
    )
    np.testing.assert_array_equal(
        np.asarray(model.backbone.conv1.kernel[...]),
        sd["backbone.conv1.weight"].transpose(2, 3, 1, 0),
    )
    with pytest.raises(ValueError, match="none.pth.*does not exist"):
        fcn_resnet50.read_state_dict(str(tmp_path / "none.pth"))
