"""Models and per-sample losses.

A model factory takes keyword arguments from the config plus ``in_features`` and ``n_classes``
(inferred from the dataset when the config leaves them out) and returns an ``nn.Module``.
A config may name any factory by import path ``package.module:function``; the built-in names and
their factories are listed in :mod:`landscope.problem.registry`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from landscope.factories import ConfigError, import_factory
from landscope.problem.registry import MODELS


class HalfSpace(nn.Module):
    """Linear score x.a (no bias); with ``halfspace_sigmoid`` loss: f_i = sigmoid(-b a.x) + (l2/2)|x|^2."""

    default_loss = "halfspace_sigmoid"

    def __init__(self, in_features: int, l2: float = 1e-5, **_):
        super().__init__()
        self.linear = nn.Linear(in_features, 1, bias=False)
        self.l2 = float(l2)

    def forward(self, x):
        return self.linear(x).squeeze(-1)


class MLP(nn.Module):
    """in -> width -> ... -> n_classes with ReLU; ``depth`` counts the linear layers (paper: 3)."""

    default_loss = "cross_entropy"

    def __init__(self, in_features: int, n_classes: int, width: int = 128, depth: int = 3, **_):
        super().__init__()
        if depth < 1:
            raise ConfigError(f"mlp depth must be >= 1, got {depth}")
        dims = [in_features] + [width] * (depth - 1) + [n_classes]
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < depth - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x.flatten(1))


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: one linear layer."""

    default_loss = "cross_entropy"

    def __init__(self, in_features: int, n_classes: int, bias: bool = True, **_):
        super().__init__()
        self.linear = nn.Linear(in_features, n_classes, bias=bias)

    def forward(self, x):
        return self.linear(x.flatten(1))


# ----------------------------------------------------------------------------------- images
def image_shape(in_features: int, in_channels: int | None = None,
                image_size: int | None = None) -> tuple[int, int]:
    """(channels, side) of a square image with ``in_features`` values; 3 channels tried before 1."""
    if in_channels is not None and image_size is None:
        image_size = math.isqrt(in_features // in_channels)
    if in_channels is None and image_size is not None:
        in_channels = in_features // (image_size * image_size)
    if in_channels is None:
        for c in (3, 1):
            side = math.isqrt(in_features // c)
            if in_features % c == 0 and side * side * c == in_features:
                in_channels, image_size = c, side
                break
        else:
            raise ConfigError(f"cannot read {in_features} input values as a square image with 1 or 3 "
                              "channels; give in_channels and image_size")
    if in_channels * image_size * image_size != in_features:
        raise ConfigError(f"in_channels={in_channels}, image_size={image_size} does not match "
                          f"{in_features} input values")
    return int(in_channels), int(image_size)


def _as_images(x: torch.Tensor, channels: int, side: int) -> torch.Tensor:
    """Accept (N, C, H, W), (N, H, W) (one channel) or flattened (N, C*H*W) input."""
    if x.dim() == 4:
        return x
    return x.reshape(len(x), channels, side, side)


class CNN(nn.Module):
    """The paper's CIFAR-10 CNN: [conv-ReLU-maxpool] x 2, then one linear layer.

    conv(in_channels -> c1), conv(c1 -> channels), both ``kernel_size`` with 'same' padding, 2x2
    max-pooling; the linear layer reads channels * (side // 4)^2 features. The paper sweeps
    ``channels`` (the 2nd conv) over {32, 64, 128, 256, 512, 2048}.
    """

    default_loss = "cross_entropy"

    def __init__(self, in_features: int, n_classes: int, channels: int = 64, c1: int = 32,
                 kernel_size: int = 3, in_channels: int | None = None, image_size: int | None = None, **_):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ConfigError(f"cnn kernel_size must be odd ('same' padding), got {kernel_size}")
        self.in_channels, self.image_size = image_shape(in_features, in_channels, image_size)
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(self.in_channels, c1, kernel_size, padding=pad)
        self.conv2 = nn.Conv2d(c1, channels, kernel_size, padding=pad)
        side = self.image_size // 2 // 2
        if side < 1:
            raise ConfigError(f"cnn needs images of side >= 4, got {self.image_size}")
        self.fc = nn.Linear(channels * side * side, n_classes)

    def forward(self, x):
        x = _as_images(x, self.in_channels, self.image_size)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def _conv_bn(c_in: int, c_out: int, stride: int = 1, kernel_size: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(c_out)]


def _widths(width: float) -> int:
    base = int(round(64 * width))
    if base < 1:
        raise ConfigError(f"width {width} leaves no channels (64 * width < 1)")
    return base


class ResNet9(nn.Module):
    """ResNet9 of Page's DAWNBench design (Myrtle.ai), CIFAR-sized input.

    prep conv_bn(c), layer1 conv_bn(2c)+pool + residual(2 x conv_bn(2c)), layer2 conv_bn(4c)+pool,
    layer3 conv_bn(8c)+pool + residual(2 x conv_bn(8c)), global max-pool, linear (no bias) scaled
    by ``out_scale`` (Page: 0.125). c = 64 * width. Convolutions have no bias (BatchNorm follows).
    """

    default_loss = "cross_entropy"

    def __init__(self, in_features: int, n_classes: int, width: float = 1.0, out_scale: float = 0.125,
                 in_channels: int | None = None, image_size: int | None = None, **_):
        super().__init__()
        self.in_channels, self.image_size = image_shape(in_features, in_channels, image_size)
        c = _widths(width)
        self.prep = nn.Sequential(*_conv_bn(self.in_channels, c), nn.ReLU())
        self.layer1 = nn.Sequential(*_conv_bn(c, 2 * c), nn.ReLU(), nn.MaxPool2d(2))
        self.res1 = nn.Sequential(*_conv_bn(2 * c, 2 * c), nn.ReLU(), *_conv_bn(2 * c, 2 * c), nn.ReLU())
        self.layer2 = nn.Sequential(*_conv_bn(2 * c, 4 * c), nn.ReLU(), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(*_conv_bn(4 * c, 8 * c), nn.ReLU(), nn.MaxPool2d(2))
        self.res3 = nn.Sequential(*_conv_bn(8 * c, 8 * c), nn.ReLU(), *_conv_bn(8 * c, 8 * c), nn.ReLU())
        self.fc = nn.Linear(8 * c, n_classes, bias=False)
        self.out_scale = float(out_scale)

    def forward(self, x):
        x = self.prep(_as_images(x, self.in_channels, self.image_size))
        x = self.layer1(x)
        x = x + self.res1(x)
        x = self.layer3(self.layer2(x))
        x = x + self.res3(x)
        x = F.max_pool2d(x, x.shape[-2:]).flatten(1)  # global max-pool (Page: MaxPool2d(4) at 32x32)
        return self.fc(x) * self.out_scale


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN with a residual; 1x1 conv-BN shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(c_in, c_out, stride), nn.ReLU(), *_conv_bn(c_out, c_out))
        self.shortcut = (nn.Sequential(*_conv_bn(c_in, c_out, stride, kernel_size=1))
                         if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (3x3 stem, no max-pool) of BasicBlocks; widths c, 2c, 4c, 8c, c = 64 * width."""

    default_loss = "cross_entropy"

    def __init__(self, in_features: int, n_classes: int, blocks: tuple[int, ...] = (2, 2, 2, 2),
                 width: float = 1.0, in_channels: int | None = None, image_size: int | None = None, **_):
        super().__init__()
        self.in_channels, self.image_size = image_shape(in_features, in_channels, image_size)
        c = _widths(width)
        self.stem = nn.Sequential(*_conv_bn(self.in_channels, c), nn.ReLU())
        stages, c_in = [], c
        for i, n in enumerate(blocks):
            c_out = c * 2**i
            for j in range(n):
                stages.append(BasicBlock(c_in, c_out, 2 if (i > 0 and j == 0) else 1))
                c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, n_classes)

    def forward(self, x):
        x = self.stages(self.stem(_as_images(x, self.in_channels, self.image_size)))
        return self.fc(x.mean((2, 3)))  # global average pool (mean: deterministic backward on GPU too)


def resnet18(in_features: int, n_classes: int, **kw) -> ResNet:
    kw.pop("blocks", None)
    return ResNet(in_features, n_classes, blocks=(2, 2, 2, 2), **kw)


def resnet34(in_features: int, n_classes: int, **kw) -> ResNet:
    kw.pop("blocks", None)
    return ResNet(in_features, n_classes, blocks=(3, 4, 6, 3), **kw)


# ----------------------------------------------------------------------------------- language models
class LockedDropout(nn.modules.dropout._DropoutNd):
    """Variational dropout on (N, T, C): one mask per sequence, shared over time (AWD-LSTM)."""

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - self.p) / (1 - self.p)
        return x * mask


class EmbeddingDropout(nn.modules.dropout._DropoutNd):
    """Drops whole rows (words) of an embedding matrix (AWD-LSTM's ``dropoute``)."""

    def forward(self, weight):
        if not self.training or self.p == 0:
            return weight
        mask = weight.new_empty(weight.shape[0], 1).bernoulli_(1 - self.p) / (1 - self.p)
        return weight * mask


def _vocab(vocab_size, n_classes) -> int:
    v = vocab_size if vocab_size is not None else n_classes
    if v is None or int(v) < 1:
        raise ConfigError("a language model needs vocab_size (or n_classes inferred from the data)")
    return int(v)


class LSTMLM(nn.Module):
    """AWD-style LSTM language model: embedding, ``n_layers`` single-layer LSTMs, linear decoder.

    Layer sizes: emb_size -> hidden_size -> ... -> (emb_size if tie_weights else hidden_size).
    Dropouts (AWD-LSTM names, all off by default): ``dropoute`` drops embedding rows, ``dropouti``
    the embedded input, ``dropouth`` between LSTM layers, ``dropout`` the last layer's output (all
    variational: one mask per sequence), ``wdrop`` DropConnect on the hidden-to-hidden weights.
    Every window starts from a zero hidden state: x (N, T) token ids -> logits (N, T, vocab).
    """

    default_loss = "lm_cross_entropy"

    def __init__(self, n_classes: int | None = None, vocab_size: int | None = None, emb_size: int = 400,
                 hidden_size: int = 1150, n_layers: int = 3, tie_weights: bool = True, dropout: float = 0.0,
                 dropouth: float = 0.0, dropouti: float = 0.0, dropoute: float = 0.0, wdrop: float = 0.0, **_):
        super().__init__()
        if n_layers < 1:
            raise ConfigError(f"lstm_lm n_layers must be >= 1, got {n_layers}")
        vocab = _vocab(vocab_size, n_classes)
        self.encoder = nn.Embedding(vocab, emb_size)
        out_last = emb_size if tie_weights else hidden_size
        sizes = [emb_size] + [hidden_size] * (n_layers - 1) + [out_last]
        self.rnns = nn.ModuleList(nn.LSTM(sizes[i], sizes[i + 1], batch_first=True) for i in range(n_layers))
        self.decoder = nn.Linear(out_last, vocab)
        self.embed_drop = EmbeddingDropout(dropoute)
        self.input_drop = LockedDropout(dropouti)
        self.hidden_drop = LockedDropout(dropouth)
        self.output_drop = LockedDropout(dropout)
        self.weight_drop = nn.Dropout(wdrop)  # applied to each weight_hh_l0 (DropConnect)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        else:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def _run(self, rnn: nn.LSTM, h: torch.Tensor) -> torch.Tensor:
        if self.weight_drop.training and self.weight_drop.p > 0:
            w = {"weight_hh_l0": self.weight_drop(rnn.weight_hh_l0)}
            return functional_call(rnn, w, (h,))[0]
        return rnn(h)[0]

    def forward(self, x):
        x = x.long()
        h = self.input_drop(F.embedding(x, self.embed_drop(self.encoder.weight)))
        for i, rnn in enumerate(self.rnns):
            h = self._run(rnn, h)
            h = self.hidden_drop(h) if i < len(self.rnns) - 1 else self.output_drop(h)
        return self.decoder(h)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.attn_drop = nn.Dropout(dropout)  # its p and mode drive the dropout inside SDPA
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        p = self.attn_drop.p if self.attn_drop.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(n, t, d)))


class Block(nn.Module):
    """Pre-LayerNorm block: x + attn(ln1 x), then x + mlp(ln2 x) (or both from x when parallel)."""

    def __init__(self, d_model: int, n_head: int, d_ff: int, dropout: float, parallel: bool):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head, dropout)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model),
                                 nn.Dropout(dropout))
        self.parallel = parallel

    def forward(self, x):
        if self.parallel:  # GPT-NeoX / Pythia
            return x + self.attn(self.ln1(x)) + self.mlp(self.ln2(x))
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerLM(nn.Module):
    """Small decoder-only Transformer (Pythia-like, learned positions): x (N, T) -> logits (N, T, vocab).

    Token + learned position embeddings, ``n_layer`` pre-LN blocks (causal SDPA, GELU MLP of
    ``d_ff`` = 4 d_model), final LayerNorm, linear head without bias (untied unless tie_weights).
    ``max_len`` defaults to the window length (in_features). GPT-2 init: N(0, 0.02), residual
    projections N(0, 0.02 / sqrt(2 n_layer)).
    """

    default_loss = "lm_cross_entropy"

    def __init__(self, n_classes: int | None = None, in_features: int | None = None,
                 vocab_size: int | None = None, n_layer: int = 6, n_head: int = 8, d_model: int = 512,
                 d_ff: int | None = None, max_len: int | None = None, dropout: float = 0.0,
                 tie_weights: bool = False, parallel_residual: bool = False, **_):
        super().__init__()
        if d_model % n_head:
            raise ConfigError(f"transformer_lm d_model={d_model} is not a multiple of n_head={n_head}")
        vocab = _vocab(vocab_size, n_classes)
        max_len = int(max_len or in_features or 2048)
        self.max_len = max_len
        self.wte = nn.Embedding(vocab, d_model)
        self.wpe = nn.Embedding(max_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_head, d_ff or 4 * d_model, dropout, parallel_residual)
                                    for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for b in self.blocks:
            nn.init.normal_(b.attn.proj.weight, 0.0, 0.02 / math.sqrt(2 * n_layer))
            nn.init.normal_(b.mlp[2].weight, 0.0, 0.02 / math.sqrt(2 * n_layer))
        if tie_weights:
            self.lm_head.weight = self.wte.weight

    def forward(self, x):
        x = x.long()
        t = x.shape[1]
        if t > self.max_len:
            raise ValueError(f"sequence length {t} exceeds transformer_lm max_len {self.max_len}")
        h = self.drop(self.wte(x) + self.wpe(torch.arange(t, device=x.device)))
        for b in self.blocks:
            h = b(h)
        return self.lm_head(self.ln_f(h))


def build_model(spec: dict, in_features: int, n_classes: int) -> nn.Module:
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    kwargs.setdefault("in_features", in_features)
    kwargs.setdefault("n_classes", n_classes)
    name = spec["name"]
    return import_factory(name if ":" in name else MODELS[name].factory, "model.name")(**kwargs)


# ----------------------------------------------------------------------------------- losses
def _cross_entropy(model, out, y):
    return F.cross_entropy(out, y, reduction="none")


def _halfspace_sigmoid(model, out, y):
    reg = 0.5 * getattr(model, "l2", 0.0) * sum((p * p).sum() for p in model.parameters())
    return torch.sigmoid(-y * out) + reg


def _mse(model, out, y):
    return ((out - y) ** 2).reshape(len(out), -1).mean(1)


def _identity(model, out, y):
    return out


def _lm_cross_entropy(model, out, y):
    """Per window: the mean over its tokens of the next-token cross-entropy; (N, T, V), (N, T) -> (N,)."""
    y = y.long()
    tok = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none")
    return tok.reshape(len(y), -1).mean(1)


LOSSES = {"cross_entropy": _cross_entropy, "halfspace_sigmoid": _halfspace_sigmoid, "mse": _mse,
          "identity": _identity, "lm_cross_entropy": _lm_cross_entropy}


def loss_for(model: nn.Module, name: str | None) -> Callable:
    """Return fn(model, outputs, targets) -> per-sample losses."""
    name = name or getattr(model, "default_loss", "cross_entropy")
    return LOSSES[name]


def batchnorm_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers (their running statistics are buffers in the state dict)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _drops(m: nn.Module) -> bool:
    if isinstance(m, nn.modules.dropout._DropoutNd):  # incl. LockedDropout, EmbeddingDropout
        return m.p > 0
    if isinstance(m, (nn.RNNBase, nn.MultiheadAttention)):  # their built-in dropout argument
        return m.dropout > 0
    return False


def has_dropout(model: nn.Module) -> bool:
    """Any dropout with p > 0: the training forward then differs from the measurement forward
    (BatchNorm alone does not: in train mode it already normalises with the batch's statistics)."""
    return any(_drops(m) for m in model.modules())


def has_stochastic_layers(model: nn.Module) -> bool:
    """Dropout with p > 0, or any BatchNorm: train-mode and eval-mode losses differ."""
    return bool(batchnorm_modules(model)) or any(_drops(m) for m in model.modules())
