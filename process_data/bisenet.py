"""Optional face-parsing backend: BiSeNet (ResNet-18 context path) with the CelebAMask-HQ
19 classes, laid out so that the widely used public ``79999_iter.pth`` state dict loads with
``strict=True``. The user supplies the weights file; nothing is downloaded.

Classes: 0 background, 1 skin, 2/3 brows, 4/5 eyes, 6 glasses, 7/8 ears, 9 earring, 10 nose,
11 mouth (inside), 12/13 lips, 14 neck, 15 necklace, 16 cloth, 17 hair, 18 hat.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HEAD_CLASSES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 17)   # face, ears, hair (no neck, cloth, hat)
SKIN_CLASSES = (1, 10, 12, 13)                                # skin, nose, lips
INPUT_SIDE = 512
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class ConvBNReLU(nn.Module):
    def __init__(self, cin, cout, ks=3, stride=1, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(y + skip)


class ResNet18(nn.Module):
    """Backbone returning the stride-8, 16 and 32 features (128, 256, 512 channels)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        f8 = self.layer2(self.layer1(x))
        f16 = self.layer3(f8)
        return f8, f16, self.layer4(f16)


class AttentionRefinement(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        f = self.conv(x)
        a = torch.sigmoid(self.bn_atten(self.conv_atten(f.mean(dim=(2, 3), keepdim=True))))
        return f * a


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, padding=0)

    def forward(self, x):
        f8, f16, f32 = self.resnet(x)
        glob = self.conv_avg(f32.mean(dim=(2, 3), keepdim=True))   # global context, broadcast below
        up32 = self.conv_head32(F.interpolate(self.arm32(f32) + glob, size=f16.shape[2:], mode="nearest"))
        up16 = self.conv_head16(F.interpolate(self.arm16(f16) + up32, size=f8.shape[2:], mode="nearest"))
        return f8, up16, up32


class FeatureFusion(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, ks=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, a, b):
        f = self.convblk(torch.cat([a, b], dim=1))
        w = torch.sigmoid(self.conv2(F.relu(self.conv1(f.mean(dim=(2, 3), keepdim=True)))))
        return f + f * w


class Head(nn.Module):
    def __init__(self, cin, cmid, n_classes):
        super().__init__()
        self.conv = ConvBNReLU(cin, cmid)
        self.conv_out = nn.Conv2d(cmid, n_classes, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """x: (B, 3, H, W) ImageNet-normalised -> logits (B, n_classes, H, W) (the main head;
    the two auxiliary heads exist only so that the training checkpoint loads strictly)."""

    def __init__(self, n_classes: int = 19):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = Head(256, 256, n_classes)
        self.conv_out16 = Head(128, 64, n_classes)
        self.conv_out32 = Head(128, 64, n_classes)

    def forward(self, x):
        f8, cp8, _ = self.cp(x)
        logits = self.conv_out(self.ffm(f8, cp8))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=True)


def load_bisenet(weights) -> BiSeNet:
    """Build BiSeNet and load ``weights`` (a state dict file such as 79999_iter.pth) strictly."""
    path = Path(weights) if weights else None
    if path is None or not path.is_file():
        raise ValueError(f"BiSeNet weights {weights!r} not found: pass --bisenet-weights PATH to the face-parsing "
                         "79999_iter.pth file, or use --masks default (no weights needed)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    net = BiSeNet(19)
    # checkpoints saved by old torch versions lack the BatchNorm step counters, which are unused
    for k, v in net.state_dict().items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros_like(v)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path} is not a face-parsing BiSeNet (19 classes) state dict: {e}") from e
    return net.eval()


class FaceParser:
    """compute_masks(image_rgb (H, W, 3) uint8, points (68, 2)) -> (head, skin) uint8 (H, W)."""

    def __init__(self, weights, device: str = "cpu"):
        self.net = load_bisenet(weights).to(device)
        self.device = device

    @torch.no_grad()
    def parse(self, image_rgb: np.ndarray) -> np.ndarray:
        """Labels (h, w) int64 of an image that is already a face crop (resized internally)."""
        x = torch.from_numpy(np.ascontiguousarray(image_rgb)).to(self.device).float().permute(2, 0, 1)[None] / 255
        h, w = x.shape[2:]
        x = F.interpolate(x, size=(INPUT_SIDE, INPUT_SIDE), mode="bilinear", align_corners=False)
        x = (x - torch.tensor(MEAN, device=self.device)[:, None, None]) / torch.tensor(STD, device=self.device)[:, None, None]
        logits = F.interpolate(self.net(x), size=(h, w), mode="bilinear", align_corners=False)
        return logits.argmax(1)[0].cpu().numpy()

    def compute_masks(self, image_rgb: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        from .manifest import ImageTransform
        from .pad import apply_transform, crop_transform

        # the parser was trained on aligned face crops: parse a square around the landmarks
        pts = np.asarray(points, np.float64)
        box = [*pts.min(0), *pts.max(0)]
        t = crop_transform(box, INPUT_SIDE, margin=2.2)
        labels = self.parse(apply_transform(image_rgb, t)).astype(np.uint8)
        H, W = image_rgb.shape[:2]
        inv = ImageTransform(1 / t.scale, (-t.offset[0] / t.scale, -t.offset[1] / t.scale), (W, H))
        back = apply_transform(labels, inv, interpolation=cv2.INTER_NEAREST)
        head = np.isin(back, HEAD_CLASSES).astype(np.uint8) * 255
        skin = np.isin(back, SKIN_CLASSES).astype(np.uint8) * 255
        return head, skin
