"""Image and language models: shapes, parameter counts against hand formulas, causality, the LM loss
against a hand computation, stochastic-layer bookkeeping, determinism, and that each one trains."""

import copy
import io
import math

import pytest
import torch
from torch import nn

from landscope.problem.evaluate import (
    Accuracy,
    evaluation_mode,
    flatten,
    loss_and_accuracy,
    measurement_mode,
    restoring_modes,
    restoring_parameters,
    trainable_parameters,
    write_flat,
)
from landscope.problem.models import (
    LOSSES,
    batchnorm_modules,
    build_model,
    has_stochastic_layers,
    image_shape,
    loss_for,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors count once


def build(spec: dict, in_features: int, n_classes: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(spec, in_features, n_classes)


# ----------------------------------------------------------------------------------- parameter counts
@pytest.mark.parametrize("c1,channels,k,c_in,side,n", [(32, 64, 3, 3, 32, 10), (8, 12, 5, 1, 28, 7)])
def test_cnn_parameter_count(c1, channels, k, c_in, side, n):
    m = build({"name": "cnn", "c1": c1, "channels": channels, "kernel_size": k}, c_in * side * side, n)
    conv1 = c1 * (c_in * k * k + 1)
    conv2 = channels * (c1 * k * k + 1)
    fc = n * (channels * (side // 4) ** 2 + 1)
    assert n_params(m) == conv1 + conv2 + fc
    assert (m.in_channels, m.image_size) == (c_in, side)


def test_cnn_paper_widths_shapes():
    x = torch.randn(2, 3, 32, 32)
    for ch in (32, 64, 128, 256, 512, 2048):
        m = build({"name": "cnn", "channels": ch}, 3072, 10)
        assert m.fc.in_features == ch * 8 * 8
        assert m(x[:1]).shape == (1, 10)
    # 2nd-conv channels 64, c1 32, 3x3: 896 + 18,496 + 40,970
    assert n_params(build({"name": "cnn"}, 3072, 10)) == 60_362


def resnet_count(blocks, n_classes, c_in=3, width=1.0):
    """Hand count of a CIFAR-style BasicBlock ResNet (convs without bias, BN = 2 params per channel)."""
    c = int(round(64 * width))
    total = c_in * c * 9 + 2 * c  # stem
    prev = c
    for i, nb in enumerate(blocks):
        out = c * 2**i
        for j in range(nb):
            total += prev * out * 9 + 2 * out + out * out * 9 + 2 * out
            if prev != out or (i > 0 and j == 0):
                total += prev * out + 2 * out  # 1x1 projection shortcut
            prev = out
    return total + prev * n_classes + n_classes


def test_resnet_parameter_counts():
    assert resnet_count((2, 2, 2, 2), 10) == 11_173_962  # the well-known CIFAR ResNet18 count
    assert n_params(build({"name": "resnet18"}, 3072, 10)) == 11_173_962
    assert n_params(build({"name": "resnet18", "width": 0.25}, 3072, 100)) == resnet_count((2, 2, 2, 2), 100,
                                                                                            width=0.25)
    assert n_params(build({"name": "resnet34", "width": 0.125}, 3072, 100)) == resnet_count((3, 4, 6, 3), 100,
                                                                                             width=0.125)
    assert resnet_count((3, 4, 6, 3), 100) == 21_328_292


def test_resnet9_parameter_count():
    def conv_bn(a, b):
        return a * b * 9 + 2 * b

    c = 64
    hand = (conv_bn(3, c) + conv_bn(c, 2 * c) + 2 * conv_bn(2 * c, 2 * c) + conv_bn(2 * c, 4 * c)
            + conv_bn(4 * c, 8 * c) + 2 * conv_bn(8 * c, 8 * c) + 8 * c * 100)
    assert hand == 6_619_200
    assert n_params(build({"name": "resnet9"}, 3072, 100)) == hand
    m = build({"name": "resnet9", "width": 0.0625}, 3072, 100)  # c = 4
    c = 4
    assert n_params(m) == (conv_bn(3, c) + conv_bn(c, 2 * c) + 2 * conv_bn(2 * c, 2 * c) + conv_bn(2 * c, 4 * c)
                           + conv_bn(4 * c, 8 * c) + 2 * conv_bn(8 * c, 8 * c) + 8 * c * 100)


def lstm_layer(i, h):
    return 4 * (i * h + h * h + 2 * h)  # W_ih, W_hh, b_ih, b_hh for the four gates


@pytest.mark.parametrize("tie", [True, False])
def test_lstm_parameter_count(tie):
    V, E, H = 11, 5, 7
    m = build({"name": "lstm_lm", "emb_size": E, "hidden_size": H, "n_layers": 3, "tie_weights": tie}, 6, V)
    last = E if tie else H
    hand = V * E + lstm_layer(E, H) + lstm_layer(H, H) + lstm_layer(H, last) + (V if tie else V * last + V)
    assert n_params(m) == hand
    # the AWD-LSTM of the paper (PTB: 10k words, 400/1150/3, tied): 24.2M parameters
    assert 10_000 * 400 + lstm_layer(400, 1150) + lstm_layer(1150, 1150) + lstm_layer(1150, 400) + 10_000 \
        == 24_221_600


def test_transformer_parameter_count():
    V, T, L, d, ff = 13, 8, 2, 16, 64
    m = build({"name": "transformer_lm", "n_layer": L, "n_head": 4, "d_model": d}, T, V)
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d)
    assert n_params(m) == V * d + T * d + L * block + 2 * d + d * V
    tied = build({"name": "transformer_lm", "n_layer": L, "n_head": 4, "d_model": d, "tie_weights": True}, T, V)
    assert n_params(tied) == n_params(m) - d * V


# ----------------------------------------------------------------------------------- shapes, inputs
def test_image_shapes_and_flat_input():
    assert image_shape(3072) == (3, 32)
    assert image_shape(784) == (1, 28)
    assert image_shape(3 * 16 * 16, image_size=16) == (3, 16)
    x = torch.randn(3, 3, 16, 16)
    for name in ("cnn", "resnet9", "resnet18", "resnet34"):
        m = build({"name": name, "c1": 4, "channels": 6, "width": 0.0625}, 768, 5).eval()
        out = m(x)
        assert out.shape == (3, 5)
        assert torch.equal(m(x.flatten(1)), out)
        losses = loss_for(m, None)(m, out, torch.tensor([0, 1, 4]))
        assert losses.shape == (3,)


def test_lm_shapes_and_vocab():
    x = torch.randint(0, 9, (4, 6))
    for spec in ({"name": "lstm_lm", "emb_size": 4, "hidden_size": 5},
                 {"name": "transformer_lm", "n_layer": 1, "n_head": 2, "d_model": 8}):
        m = build(spec, 6, 9)
        assert m.default_loss == "lm_cross_entropy"
        out = m(x)
        assert out.shape == (4, 6, 9)
        assert loss_for(m, None)(m, out, x).shape == (4,)
        assert build({**spec, "vocab_size": 12}, 6, 9)(x).shape == (4, 6, 12)  # vocab_size wins


def test_lm_cross_entropy_by_hand():
    out = torch.tensor([[[1.0, 2.0, 0.0], [0.5, 0.5, 3.0]],
                        [[0.0, 0.0, 0.0], [2.0, -1.0, 1.0]]])
    y = torch.tensor([[1, 0], [2, 0]])

    def ce(z, k):
        return math.log(sum(math.exp(v) for v in z)) - z[k]

    hand = [(ce([1, 2, 0], 1) + ce([0.5, 0.5, 3], 0)) / 2, (ce([0, 0, 0], 2) + ce([2, -1, 1], 0)) / 2]
    got = LOSSES["lm_cross_entropy"](None, out, y)
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx(hand, rel=1e-6)
    assert hand[1] == pytest.approx((math.log(3) + math.log(math.e**2 + math.e**-1 + math.e) - 2) / 2)


@pytest.mark.parametrize("spec", [
    {"name": "transformer_lm", "n_layer": 2, "n_head": 2, "d_model": 8},
    {"name": "lstm_lm", "emb_size": 4, "hidden_size": 6, "n_layers": 2},
])
def test_language_models_are_causal(spec):
    m = build(spec, 10, 7).eval()
    x = torch.randint(0, 7, (2, 10))
    x2 = x.clone()
    x2[:, 6] = (x[:, 6] + 1) % 7  # change token 6 only
    a, b = m(x), m(x2)
    assert torch.equal(a[:, :6], b[:, :6])  # earlier positions untouched, bit for bit
    assert not torch.allclose(a[:, 6:], b[:, 6:])


# ----------------------------------------------------------------------------------- stochastic layers
def test_stochastic_layers_are_reported():
    img = {"c1": 4, "channels": 4, "width": 0.0625}
    assert not has_stochastic_layers(build({"name": "cnn", **img}, 768, 3))
    for name in ("resnet9", "resnet18", "resnet34"):
        m = build({"name": name, **img}, 768, 3)
        assert has_stochastic_layers(m) and len(batchnorm_modules(m)) > 0
    assert len(batchnorm_modules(build({"name": "resnet18", **img}, 768, 3))) == 1 + 8 * 2 + 3
    lstm = {"name": "lstm_lm", "emb_size": 4, "hidden_size": 4}
    assert not has_stochastic_layers(build(lstm, 5, 7))  # dropout modules with p = 0 do not count
    for key in ("dropout", "dropouth", "dropouti", "dropoute", "wdrop"):
        assert has_stochastic_layers(build({**lstm, key: 0.3}, 5, 7)), key
    tf = {"name": "transformer_lm", "n_layer": 1, "n_head": 2, "d_model": 8}
    assert not has_stochastic_layers(build(tf, 5, 7))
    assert has_stochastic_layers(build({**tf, "dropout": 0.1}, 5, 7))
    assert not batchnorm_modules(build(tf, 5, 7))


@pytest.mark.parametrize("spec", [
    {"name": "lstm_lm", "emb_size": 6, "hidden_size": 8, "dropout": 0.3, "dropouth": 0.3, "dropouti": 0.3,
     "dropoute": 0.2, "wdrop": 0.5},
    {"name": "transformer_lm", "n_layer": 1, "n_head": 2, "d_model": 8, "dropout": 0.3},
])
def test_dropout_on_in_train_off_in_eval(spec):
    m = build(spec, 8, 9)
    x = torch.randint(0, 9, (3, 8))
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(1)
    assert torch.equal(m(x), a)  # train mode: random but seeded
    assert not torch.equal(m(x), a)
    m.eval()
    e = m(x)
    assert torch.equal(m(x), e)
    off = build({k: v for k, v in spec.items() if "drop" not in k}, 8, 9)
    off.load_state_dict(m.state_dict())
    assert torch.equal(off(x), e)  # eval mode == the same weights without any dropout


def test_weight_drop_reaches_the_recurrent_weights():
    m = build({"name": "lstm_lm", "emb_size": 4, "hidden_size": 5, "n_layers": 2, "wdrop": 0.5}, 6, 7)
    x = torch.randint(0, 7, (2, 6))
    LOSSES["lm_cross_entropy"](m, m(x), x).mean().backward()
    for rnn in m.rnns:
        g = rnn.weight_hh_l0.grad
        assert g is not None and g.abs().sum() > 0
        assert (g == 0).any()  # dropped connections get no gradient
    assert [k for k in m.state_dict() if "weight_hh" in k] == ["rnns.0.weight_hh_l0", "rnns.1.weight_hh_l0"]


def test_measurement_mode_leaves_batchnorm_buffers_alone():
    m = build({"name": "resnet9", "width": 0.0625}, 3 * 8 * 8, 4)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with measurement_mode(m):
        m(torch.randn(5, 3, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    m.train()
    m(torch.randn(5, 3, 8, 8))
    assert not torch.equal(before["prep.1.running_mean"], m.state_dict()["prep.1.running_mean"])


# ----------------------------------------------------------------------------------- flat vectors, modes
def mixed_model():
    """Linear(2, 2) in float32 with weight [[0.1, 0.2], [0.3, 0.4]] and a frozen bias [5, 6], then
    batch-norm over 2 features in float64 (weight [7, 8], bias [9, 10])."""
    m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2).double())
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[0.1, 0.2], [0.3, 0.4]]))
        m[0].bias.copy_(torch.tensor([5.0, 6.0]))
        m[1].weight.copy_(torch.tensor([7.0, 8.0]))
        m[1].bias.copy_(torch.tensor([9.0, 10.0]))
    m[0].bias.requires_grad_(False)
    return m


def test_flatten_is_the_trainable_parameters_in_float64_and_write_flat_inverts_it():
    m = mixed_model()
    params = trainable_parameters(m)
    assert [tuple(p.shape) for p in params] == [(2, 2), (2,), (2,)]  # the frozen bias is left out
    w = flatten(params)
    f32 = [float(torch.tensor(v, dtype=torch.float32)) for v in (0.1, 0.2, 0.3, 0.4)]  # 0.1f = 0.10000000149...
    assert w.dtype == torch.float64 and w.tolist() == f32 + [7.0, 8.0, 9.0, 10.0]
    assert f32[0] != 0.1  # the float32 value itself, converted exactly, not re-rounded
    w[0] = 123.0
    assert float(m[0].weight.detach()[0, 0]) == f32[0]  # a copy
    write_flat(params, torch.arange(8, dtype=torch.float64) + 0.5)
    assert m[0].weight.dtype == torch.float32 and m[0].weight.tolist() == [[0.5, 1.5], [2.5, 3.5]]
    assert m[1].weight.tolist() == [4.5, 5.5] and m[1].bias.tolist() == [6.5, 7.5]
    assert m[0].bias.tolist() == [5.0, 6.0]  # frozen: untouched
    assert flatten(params, "cpu").tolist() == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5]


def test_restoring_modes_brings_back_every_flag_even_after_an_error():
    m = mixed_model()
    m.train()
    m[0].eval()
    with pytest.raises(RuntimeError), restoring_modes(m):
        m.eval()
        m[1].train()
        m[1].track_running_stats = False
        raise RuntimeError("inside")
    assert [m.training, m[0].training, m[1].training] == [True, False, True] and m[1].track_running_stats
    with evaluation_mode(m):
        assert not any(mod.training for mod in m.modules())
    with measurement_mode(m):
        assert m[1].training and not m[1].track_running_stats and not m.training
    assert [m.training, m[0].training, m[1].training] == [True, False, True] and m[1].track_running_stats


def test_restoring_parameters_puts_back_the_trainable_parameters_and_modes():
    m = mixed_model()
    m.train()
    before = flatten(trainable_parameters(m))
    with restoring_parameters(m):
        assert not m.training and not m[1].training
        write_flat(trainable_parameters(m), torch.zeros(8, dtype=torch.float64))
        assert flatten(trainable_parameters(m)).abs().sum() == 0
    assert torch.equal(flatten(trainable_parameters(m)), before) and m.training and m[1].training


def test_accuracy_rule_for_signs_tokens_and_regression():
    signs = Accuracy(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    signs.add(torch.tensor([0.5, -1.0]), torch.tensor([1.0, -1.0]))  # both right
    signs.add(torch.tensor([2.0, -3.0]), torch.tensor([-1.0, 1.0]))  # both wrong
    assert signs.value(4) == 0.5
    tokens = torch.tensor([[0, 1, 2], [2, 2, 2]])  # (sequences, tokens)
    acc = Accuracy(tokens)
    out = nn.functional.one_hot(torch.tensor([[0, 1, 0], [2, 0, 0]]), 3).double()  # 2/3 and 1/3 right
    acc.add(out, tokens)
    assert acc.value(2) == pytest.approx(0.5, abs=1e-15)
    regression = Accuracy(torch.tensor([0.3, 2.0]))
    regression.add(torch.tensor([0.3, 2.0]), torch.tensor([0.3, 2.0]))
    assert math.isnan(regression.value(2))


def test_loss_and_accuracy_sums_chunks_in_float64_in_evaluation_mode():
    m = nn.Sequential(nn.Dropout(0.9), nn.Linear(1, 1, bias=False)).double()
    with torch.no_grad():
        m[1].weight.fill_(2.0)
    m.train()
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]], dtype=torch.float64)
    y = torch.zeros(5, 1, dtype=torch.float64)
    sq = lambda model, out, t: ((out - t) ** 2).squeeze(-1)  # noqa: E731
    loss, acc = loss_and_accuracy(m, sq, x, y, chunk=2)  # dropout off: outputs 2, 4, .., 10
    assert loss == (4 + 16 + 36 + 64 + 100) / 5 and math.isnan(acc) and m.training


def test_tied_weights_survive_state_dict_roundtrip_and_deepcopy():
    m = build({"name": "lstm_lm", "emb_size": 4, "hidden_size": 5}, 6, 7)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = build({"name": "lstm_lm", "emb_size": 4, "hidden_size": 5}, 6, 7, seed=3)
    m2.load_state_dict(torch.load(buf, weights_only=True))
    assert m2.decoder.weight is m2.encoder.weight
    c = copy.deepcopy(m2)
    assert c.decoder.weight is c.encoder.weight
    x = torch.randint(0, 7, (2, 6))
    assert torch.equal(c(x), m(x))


# ----------------------------------------------------------------------------------- training
TINY = [  # (model, data shape, classes or vocabulary, Adam lr)
    ({"name": "cnn", "c1": 4, "channels": 8}, (16, 3, 16, 16), 4, 1e-2),
    ({"name": "resnet9", "width": 0.0625}, (16, 3, 8, 8), 4, 1e-2),
    ({"name": "resnet18", "width": 0.0625}, (16, 3, 8, 8), 4, 1e-2),
    ({"name": "resnet34", "width": 0.0625}, (16, 3, 8, 8), 4, 1e-2),
    # a 3-layer LSTM with +-0.1 embeddings sits on a plateau at first: a larger step leaves it in 20
    ({"name": "lstm_lm", "emb_size": 8, "hidden_size": 12, "dropouth": 0.1, "wdrop": 0.1}, (8, 6), 11, 1e-1),
    ({"name": "transformer_lm", "n_layer": 2, "n_head": 2, "d_model": 16, "dropout": 0.1}, (8, 6), 11, 1e-2),
]


def train(spec, shape, n_classes, lr, steps=20, seed=0):
    gen = torch.Generator().manual_seed(123)
    if len(shape) == 2:  # token windows; target = the current token (learnable by any LM in 20 steps)
        x = torch.randint(0, n_classes, shape, generator=gen)
        y = x.clone()
    else:
        x = torch.randn(shape, generator=gen)
        y = torch.randint(0, n_classes, (shape[0],), generator=gen)
    m = build(spec, x[0].numel(), n_classes, seed)
    loss_fn = loss_for(m, None)
    opt = torch.optim.Adam(m.parameters(), lr=lr)

    def eval_loss():
        with measurement_mode(m), torch.no_grad():
            return loss_fn(m, m(x), y).mean().item()

    first = eval_loss()
    m.train()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(m, m(x), y).mean().backward()
        opt.step()
    return first, eval_loss(), m


@pytest.mark.parametrize("spec,shape,n_classes,lr", TINY, ids=[t[0]["name"] for t in TINY])
def test_tiny_models_train_and_are_deterministic(spec, shape, n_classes, lr):
    first, last, m = train(spec, shape, n_classes, lr)
    assert last < 0.8 * first
    _, last2, m2 = train(spec, shape, n_classes, lr)  # same seed: the same trajectory, bit for bit
    assert last2 == last
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_batchnorm_model_replays_bitwise_through_the_pipeline(tmp_path, spec_factory):
    """ResNet9 on 8x8 digits: BatchNorm running statistics live in the checkpoints, and measuring
    (batch statistics, running statistics restored) does not move the replayed trajectory."""
    from conftest import run_pipeline

    spec = spec_factory(model={"name": "resnet9", "width": 0.0625}, steps=8, snapshot_every=4,
                        optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9})
    results, ckpt, drifts = run_pipeline(spec, tmp_path)
    assert drifts == [0.0, 0.0]
