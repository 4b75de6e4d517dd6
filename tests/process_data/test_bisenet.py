import numpy as np
import pytest
import torch

from process_data.bisenet import BiSeNet, FaceParser, load_bisenet


def test_state_dict_round_trip_and_shapes(tmp_path, monkeypatch):
    from process_data import bisenet

    monkeypatch.setattr(bisenet, "INPUT_SIDE", 128)  # random weights: only shapes matter here
    net = BiSeNet(19).eval()
    keys = net.state_dict().keys()
    # module names of the public face-parsing checkpoint (79999_iter.pth)
    for k in ("cp.resnet.conv1.weight", "cp.resnet.layer2.0.downsample.0.weight", "cp.arm16.conv_atten.weight",
              "cp.conv_avg.conv.weight", "ffm.convblk.bn.running_mean", "ffm.conv2.weight",
              "conv_out.conv_out.weight", "conv_out16.conv.conv.weight", "conv_out32.conv_out.weight"):
        assert k in keys, k
    assert net.conv_out.conv_out.weight.shape == (19, 256, 1, 1)
    assert net.cp.arm32.conv.conv.weight.shape == (128, 512, 3, 3)
    path = tmp_path / "w.pth"
    torch.save(net.state_dict(), path)
    net2 = load_bisenet(path)  # strict=True inside
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        a, b = net(x), net2(x)
    assert a.shape == (1, 19, 64, 96) and torch.allclose(a, b)

    parser = FaceParser(path)
    img = np.random.default_rng(0).integers(0, 255, (120, 100, 3), dtype=np.uint8)
    pts = np.random.default_rng(1).uniform(30, 80, (68, 2))
    head, skin = parser.compute_masks(img, pts)
    assert head.shape == skin.shape == (120, 100) and head.dtype == np.uint8
    assert set(np.unique(head)) <= {0, 255}


def test_missing_or_wrong_weights(tmp_path):
    with pytest.raises(ValueError, match="--bisenet-weights"):
        load_bisenet(tmp_path / "79999_iter.pth")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a face-parsing"):
        load_bisenet(tmp_path / "bad.pth")
