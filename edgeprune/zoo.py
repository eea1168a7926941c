"""Models to try edgeprune on, nothing downloaded: a small CNN of our own and transformers' model classes
built from configs with random weights. Each factory carries `example_inputs()` so the CLI can trace it
(`edgeprune plan --model edgeprune.zoo:resnet18`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ._quiet import TORCHAO_IMPORT, quiet


def _with_inputs(make_inputs: Callable[[], object]):
    def attach(factory):
        factory.example_inputs = make_inputs
        return factory

    return attach


def _image(size: int, batch: int = 1) -> Callable[[], dict]:
    return lambda: {"pixel_values": torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))}


class SmallCNN(nn.Module):
    """A residual block, a depthwise-separable block and a channel concat: the couplings pruning must keep."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.res = nn.Sequential(nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                 nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w))
        self.expand = nn.Sequential(nn.Conv2d(w, 2 * w, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(2 * w, 2 * w, 3, padding=1, groups=2 * w, bias=False),
                                       nn.BatchNorm2d(2 * w), nn.ReLU())
        self.branch_a = nn.Sequential(nn.Conv2d(2 * w, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.branch_b = nn.Sequential(nn.Conv2d(2 * w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(2 * w, 2 * w)
        self.classifier = nn.Linear(2 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.res(x))
        x = self.depthwise(self.expand(x))
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        x = self.pool(x).flatten(1)
        return self.classifier(torch.relu(self.fc1(x)))


@_with_inputs(lambda: (torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)),))
def small_cnn() -> nn.Module:
    """For scikit-learn's 8x8 digits: 1 input channel, 10 classes."""
    torch.manual_seed(0)
    return SmallCNN().eval()


@quiet(TORCHAO_IMPORT)  # transformers imports torchao, if installed, when it first builds a model
def _hf(config_cls: str, model_cls: str, **config):
    import transformers

    torch.manual_seed(0)
    cfg = getattr(transformers, config_cls)(**config)
    return getattr(transformers, model_cls)(cfg).eval()


@_with_inputs(_image(224))
def resnet18() -> nn.Module:
    return _hf("ResNetConfig", "ResNetForImageClassification", layer_type="basic", depths=[2, 2, 2, 2],
               hidden_sizes=[64, 128, 256, 512], num_labels=1000)


@_with_inputs(_image(224))
def resnet50() -> nn.Module:
    return _hf("ResNetConfig", "ResNetForImageClassification", num_labels=1000)


@_with_inputs(_image(224))
def mobilenet_v2() -> nn.Module:
    return _hf("MobileNetV2Config", "MobileNetV2ForImageClassification", num_labels=1000)


@_with_inputs(_image(224))
def vit_b16() -> nn.Module:
    return _hf("ViTConfig", "ViTForImageClassification", num_labels=1000)


@_with_inputs(_image(32))
def tiny_resnet() -> nn.Module:
    return _hf("ResNetConfig", "ResNetForImageClassification", layer_type="bottleneck", depths=[1, 1, 1, 1],
               hidden_sizes=[32, 64, 128, 256], embedding_size=32, num_labels=10)


@_with_inputs(_image(32))
def tiny_mobilenet_v2() -> nn.Module:
    return _hf("MobileNetV2Config", "MobileNetV2ForImageClassification", image_size=32, depth_multiplier=0.35,
               num_labels=10)


@_with_inputs(_image(32))
def tiny_convnext() -> nn.Module:
    return _hf("ConvNextConfig", "ConvNextForImageClassification", image_size=32, hidden_sizes=[16, 32, 64, 128],
               depths=[1, 1, 1, 1], num_labels=10)


@_with_inputs(_image(32))
def tiny_vit() -> nn.Module:
    return _hf("ViTConfig", "ViTForImageClassification", image_size=32, patch_size=8, hidden_size=64,
               num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, num_labels=10)


@_with_inputs(lambda: {"input_ids": torch.randint(0, 100, (1, 16), generator=torch.Generator().manual_seed(0)),
                       "attention_mask": torch.ones(1, 16, dtype=torch.long)})
def tiny_bert() -> nn.Module:
    return _hf("BertConfig", "BertForSequenceClassification", vocab_size=100, hidden_size=64, num_hidden_layers=2,
               num_attention_heads=4, intermediate_size=128, max_position_embeddings=64, num_labels=3)


def digits(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled handwritten digits (1,797 real 8×8 images, 10 classes), as (images, labels):
    images (N, 1, 8, 8) float32 scaled to [0, 1]. "train" is the first 80%, "test" the rest. Real data
    for calibrating int8 exports and for fine-tuning `small_cnn`, with nothing downloaded."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target, dtype=torch.long)
    cut = int(0.8 * len(labels))
    if split == "train":
        return images[:cut], labels[:cut]
    if split == "test":
        return images[cut:], labels[cut:]
    raise ValueError(f"split {split!r}: expected 'train' or 'test'")
