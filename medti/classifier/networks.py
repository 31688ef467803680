"""The diagnostic classifier's network: a 2D ResNet or DenseNet-121 in torchvision's layout, in plain torch.

The networks are written here (about a hundred lines) rather than imported: MONAI's took 9 s to import on two
CPU cores, more than a default classifier job's training, and torchvision pulls a CUDA torch. Layer names and
shapes are torchvision's, so its ImageNet release files load as they are.

Networks are trained from scratch by default. ``pretrained: imagenet`` (or true) starts from ImageNet weights:
torchvision's release file (``resnet18-f37072fd.pth`` and its kin, :data:`IMAGENET_URLS`), read offline from the
torch hub cache, ``$TORCH_HOME/hub/checkpoints/`` (``~/.cache/torch/hub/checkpoints/`` without TORCH_HOME),
or from the path ``pretrained`` names instead. medti never downloads it: place the file there once (``curl -L
-o "$TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth" https://download.pytorch.org/models/resnet18-f37072fd.pth``).
Every weight but the last layer's (a new head for this task's classes) is loaded.
Inputs are always normalised with the ImageNet mean and standard deviation, so both start the same way.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from medti.errors import ConfigError, ModelError

RESNET_LAYERS = {"resnet10": [1, 1, 1, 1], "resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}
ARCHS = tuple(RESNET_LAYERS) + ("densenet121",)
IMAGENET_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "densenet121": "https://download.pytorch.org/models/densenet121-a639ec97.pth",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class NetworkSpec:
    """What it takes to rebuild a trained classifier (stored beside its weights as model.json)."""

    arch: str
    num_classes: int
    width: float = 1.0
    size: int = 64
    classes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> NetworkSpec:
        return cls(arch=d["arch"], num_classes=int(d["num_classes"]), width=float(d["width"]),
                   size=int(d["size"]), classes=tuple(d.get("classes", ())))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """torchvision's ResNet with basic blocks (7x7 stride-2 stem, max pool, projection shortcuts), every stage's
    channels times ``width``."""

    def __init__(self, layers: list[int], num_classes: int, width: float = 1.0):
        super().__init__()
        planes = [max(1, int(c * width)) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, planes[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = planes[0]
        for i, (n, cout) in enumerate(zip(layers, planes)):
            blocks = [BasicBlock(cin if b == 0 else cout, cout, 2 if b == 0 and i > 0 else 1) for b in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout
        self.fc = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int = 4):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))], 1)


class DenseNet(nn.Module):
    """torchvision's DenseNet-121 (blocks 6/12/24/16, bottleneck 4, compression 0.5) with ``init_features`` and
    ``growth`` scaled by the caller."""

    def __init__(self, num_classes: int, init_features: int = 64, growth: int = 32,
                 blocks: tuple[int, ...] = (6, 12, 24, 16)):
        super().__init__()
        layers = [("conv0", nn.Conv2d(3, init_features, 7, 2, 3, bias=False)),
                  ("norm0", nn.BatchNorm2d(init_features)), ("relu0", nn.ReLU(inplace=True)),
                  ("pool0", nn.MaxPool2d(3, 2, 1))]
        c = init_features
        for i, n in enumerate(blocks):
            block = nn.Sequential()
            for j in range(n):
                block.add_module(f"denselayer{j + 1}", DenseLayer(c + j * growth, growth))
            layers.append((f"denseblock{i + 1}", block))
            c += n * growth
            if i < len(blocks) - 1:
                layers.append((f"transition{i + 1}", nn.Sequential(
                    OrderedDict(norm=nn.BatchNorm2d(c), relu=nn.ReLU(inplace=True),
                                conv=nn.Conv2d(c, c // 2, 1, bias=False), pool=nn.AvgPool2d(2, 2)))))
                c //= 2
        layers.append(("norm5", nn.BatchNorm2d(c)))
        self.features = nn.Sequential(OrderedDict(layers))
        self.classifier = nn.Linear(c, num_classes)
        _init(self)

    def forward(self, x):
        x = F.relu(self.features(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _init(net: nn.Module) -> None:
    """torchvision's initialisation: He-normal convolutions (fan out), unit batch norms, zero biases."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


def build_network(spec: NetworkSpec, pretrained: bool | str | os.PathLike = False) -> nn.Module:
    """A 2D network for ``spec``; ImageNet weights (all but the new last layer) when ``pretrained`` is true or
    ``imagenet`` (torchvision's file in the torch hub cache) or the path of such a file."""
    path = check_pretrained(spec.arch, spec.width, pretrained)
    if spec.arch in RESNET_LAYERS:
        net = ResNet(RESNET_LAYERS[spec.arch], spec.num_classes, spec.width)
    else:
        net = DenseNet(spec.num_classes, init_features=max(1, round(64 * spec.width)),
                       growth=max(1, round(32 * spec.width)))
    if path is not None:
        load_imagenet(net, spec.arch, path)
    return net


def place(net: nn.Module, device) -> nn.Module:
    """``net`` on ``device``; on the CPU in the channels-last layout, oneDNN's fast path for convolutions (the
    default classifier's training step takes 25 % less time on two cores; docs/performance.md). The layout changes
    no weight's value and no state dict's keys or shapes."""
    net = net.to(device)
    if torch.device(device).type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    return net


def check_pretrained(arch: str, width: float, pretrained: bool | str | os.PathLike) -> Path | None:
    """The ImageNet weights file ``pretrained`` asks for (None: none), checked before anything is read or
    trained: ConfigError for an architecture or width without ImageNet weights, ModelError (saying where to
    place it) for a missing file."""
    if arch not in ARCHS:
        raise ConfigError(f"classifier.arch: '{arch}' is not one of {', '.join(ARCHS)}")
    if pretrained is False or pretrained is None:
        return None
    if arch not in IMAGENET_URLS:
        raise ConfigError(f"classifier.pretrained: there are no ImageNet weights for {arch} "
                          f"(use one of {', '.join(IMAGENET_URLS)}, or pretrained: false)")
    if width != 1.0:
        raise ConfigError(f"classifier.width: ImageNet weights exist for width 1.0 only, not {width}")
    path = imagenet_file(arch, pretrained)
    if not path.is_file():
        raise ModelError(f"classifier.pretrained: the ImageNet weights for {arch} are not at {path}; download "
                         f"{IMAGENET_URLS[arch]} and place it there (medti reads it offline; set TORCH_HOME for "
                         "another hub cache, or give classifier.pretrained the file's path), or set "
                         "classifier.pretrained: false")
    return path


def imagenet_file(arch: str, pretrained: bool | str | os.PathLike = "imagenet") -> Path:
    """Where the ImageNet weights of ``arch`` are read from: the torch hub cache's copy of torchvision's release
    file for true/``imagenet``, else the path given."""
    if pretrained is True or pretrained == "imagenet":
        return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_URLS[arch].rsplit("/", 1)[1]
    return Path(pretrained).expanduser()


def load_imagenet(net: nn.Module, arch: str, path: str | os.PathLike) -> None:
    """Load a torchvision-layout ImageNet state dict from ``path`` (offline) into ``net``, all but its last
    layer; ModelError (one line, saying where to place the file) when it is absent or does not fit."""
    path = Path(path)
    url = IMAGENET_URLS[arch]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: pickle, zip and runtime errors alike
        raise ModelError(f"classifier.pretrained: {path}: not a readable state dict ({type(exc).__name__}: "
                         f"{exc}); download {url} again") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"classifier.pretrained: {path}: holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if arch == "densenet121":
        state = _densenet_keys(state)  # the release file's older names (denselayer1.norm.1)
    own = net.state_dict()
    last = {f"{name}.{p}" for name in (_head_name(net),) for p in ("weight", "bias")}
    usable = {k: v for k, v in state.items() if k in own and k not in last}
    missing = [k for k in own if k not in usable and k not in last and not k.endswith("num_batches_tracked")]
    wrong = [k for k, v in usable.items() if v.shape != own[k].shape]
    if missing or wrong:
        raise ModelError(f"classifier.pretrained: {path}: the weights do not fit {arch} "
                         f"({len(missing)} missing, {len(wrong)} of another shape, e.g. {(missing + wrong)[0]})")
    own.update(usable)
    net.load_state_dict(own)


def _densenet_keys(state: dict) -> dict:
    """torchvision's DenseNet release files name layers as before its 0.3 release (``denselayer1.norm.1``);
    its own loader renames them to ``denselayer1.norm1`` as here."""
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$")
    out = {}
    for key, value in state.items():
        m = pattern.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def legacy_keys(state: dict) -> dict:
    """A state dict saved by earlier medti releases (MONAI's DenseNet names) in today's names; others unchanged."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"(denselayer\d+)\.layers\.", r"\1.", key)
        out[key.replace("class_layers.out.", "classifier.")] = value
    return out


def _head_name(net: nn.Module) -> str:
    return "fc" if isinstance(net, ResNet) else "classifier"


def head(net: nn.Module) -> nn.Linear:
    """The last (classification) layer: its input is the penultimate feature vector."""
    return net.get_submodule(_head_name(net))


def standardise(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (``N x 3 x H x W``) standardised with the ImageNet mean and deviation."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def normalise(images: torch.Tensor) -> torch.Tensor:
    """``N x 3 x H x W`` uint8 -> the network's input: scaled to [0, 1], then :func:`standardise`."""
    return standardise(images.float() / 255.0)


@torch.no_grad()
def predict(net: nn.Module, images: torch.Tensor, batch_size: int = 256, features: bool = False):
    """Class probabilities (``N x K``) for uint8 images; with ``features`` also the penultimate features.

    The network is put in eval mode (batch norm uses its running statistics) and left there.
    """
    net.eval()
    device = next(net.parameters()).device
    captured: list[torch.Tensor] = []
    hook = head(net).register_forward_hook(lambda m, inputs, out: captured.append(inputs[0].detach().cpu())) \
        if features else None
    try:
        probs = [torch.softmax(net(normalise(images[i:i + batch_size].to(device))), dim=1).cpu()
                 for i in range(0, len(images), batch_size)]
    finally:
        if hook is not None:
            hook.remove()
    probs_all = torch.cat(probs) if probs else torch.zeros((0, head(net).out_features))
    if features:
        feats = torch.cat(captured) if captured else torch.zeros((0, head(net).in_features))
        return probs_all, feats
    return probs_all
