"""The replay's fast paths give the numbers of the plain computation: the Gram matrix of
(g, x_k - x_K) (StepGram) by hand and bit for bit as one concatenated float64 product; f_{i_k}(x_K)
of many steps from stacked forwards (every distinct sample through a forward once; batch-norm
normalising each step's batch on its own) bit for bit as one forward per step, or per stack, gives it."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_pipeline

from landscope.problem import build
from landscope.problem.evaluate import use_batch_statistics
from landscope.trajectory import replay

CPU = torch.device("cpu")


def stacked_reference(problem, model, steps, per):
    """What a forward of ``per`` steps' batches stacked gives each step (no sharing of samples)."""
    out = []
    with torch.no_grad():
        for a in range(0, len(steps), per):
            chunk = steps[a:a + per]
            idx = torch.cat([problem.batch(s) for s in chunk])
            losses = problem.loss_fn(model, model(problem.data.x[idx]), problem.data.y[idx])
            out.append(losses.reshape(len(chunk), -1).mean(1).double())
    return torch.cat(out)


# ----------------------------------------------------------------------------------- the Gram matrix
def test_gram_of_gradient_and_direction_equals_hand_values_and_follows_the_parameters():
    # dyadic numbers: every product and sum below is exact in float64
    w = torch.nn.Parameter(torch.tensor([[1.5, -2.0], [0.25, 3.0]]))
    b = torch.nn.Parameter(torch.tensor([0.5, -1.0]))
    g = [torch.tensor([[0.5, 0.25], [-0.75, 1.0]]), torch.tensor([2.0, -1.5])]
    x_min = replay.FixedMinimizer([torch.tensor([[1.0, -1.0], [0.0, 2.0]]), torch.tensor([0.0, 0.0])])
    gram = replay.StepGram([w, b], x_min, 2, CPU)
    gram.add(0, g)
    with torch.no_grad():  # an optimizer step, in place: the next measurement sees the new x_k
        w.sub_(0.5 * g[0])
        b.sub_(0.5 * g[1])
    gram.add(1, g)
    gv = np.array([0.5, 0.25, -0.75, 1.0, 2.0, -1.5])
    d0 = np.array([0.5, -1.0, 0.25, 1.0, 0.5, -1.0])
    d1 = d0 - 0.5 * gv
    for row, d in zip(gram.grams.tolist(), (d0, d1)):
        assert row == [gv @ gv, gv @ d, gv @ d, d @ d]
    assert gram.grams[0].tolist() == [8.125, 3.3125, 3.3125, 3.5625]


def test_gram_is_bitwise_the_concatenated_float64_product(spec_factory):
    spec = spec_factory(model={"name": "mlp", "width": 32, "depth": 3})
    problem = build.build_problem(spec)
    params = list(problem.model.parameters())
    torch.manual_seed(1)
    grads = [torch.randn_like(p) for p in params]
    x_min = replay.FixedMinimizer([p.detach() + 1e-3 * torch.randn_like(p) for p in params])
    gram = replay.StepGram(params, x_min, 1, CPU)
    gram.add(0, grads)
    pair = torch.stack([torch.cat([t.reshape(-1) for t in grads]).double(),
                        torch.cat([p.detach().reshape(-1) for p in params]).double() - x_min.flat])
    assert torch.equal(gram.grams[0].view(2, 2), pair @ pair.T)


# ----------------------------------------------------------------------------------- f_{i_k}(x_K), stacked
def test_distinct_samples_go_through_one_forward_each_and_give_the_stacked_values(spec_factory):
    # 200 samples, 12 batches of 16 an epoch: 37 steps revisit samples; 40 // 16 = 2 steps a forward,
    # so 18 whole pairs and a last step on its own
    spec = spec_factory(model={"name": "mlp", "width": 8}, eval_batch_size=40, steps=40, snapshot_every=40)
    problem = build.build_problem(spec)
    model = problem.model.eval()
    steps = range(3, 40)
    rows = []
    model.register_forward_pre_hook(lambda m, args: rows.append(len(args[0])))
    got = replay.losses_at(problem, model, steps)
    batches = torch.stack([problem.batch(s) for s in steps])
    whole = len(torch.unique(batches[:36]))
    assert sorted(set(rows)) == [16, 32] and rows.count(16) == 1  # forwards of 2 steps' worth, then the last step's
    # each distinct sample once (the last forward padded), the first pair stacked as it is (the check), the last step
    assert sum(rows) == -(-whole // 32) * 32 + 32 + 16 < len(steps) * 16
    assert torch.equal(got, stacked_reference(problem, model, steps, 2))
    # and by hand: the mean cross-entropy of step 10's batch
    idx = build.batch_indices(200, 16, 0, 10)
    with torch.no_grad():
        ref = F.cross_entropy(model(problem.data.x[idx]), problem.data.y[idx]).item()
    assert got[10 - 3].item() == pytest.approx(ref, rel=1e-6)


def test_matrix_vector_models_keep_the_stacked_values(spec_factory):
    # one-output linear model: its forward is a matrix-vector product, whose rounding may change with
    # the number of rows; batch_size 1 revisits the 20 samples many times; 8 steps a forward, 21 steps
    spec = spec_factory(model={"name": "halfspace_logistic"}, dataset={"name": "halfspace", "n_per_class": 10},
                        batch_size=1, eval_batch_size=8, steps=24, snapshot_every=24, f_i_star="exact")
    problem = build.build_problem(spec)
    model = problem.model.eval()
    steps = range(21)
    assert torch.equal(replay.losses_at(problem, model, steps), stacked_reference(problem, model, steps, 8))


def test_batch_norm_normalises_each_stacked_batch_on_its_own():
    bn = torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, -1.0, 1.0]))
    use_batch_statistics(bn)
    model = torch.nn.Sequential(bn)
    torch.manual_seed(0)
    x = torch.randn(8, 3) * 3 + 1
    with replay.per_batch_norm(model, 4):
        out = model(x)
    for part, got in zip(x.split(4), out.split(4)):  # by hand, with each batch's own (biased) statistics
        ref = (part - part.mean(0)) / torch.sqrt(part.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
        assert torch.allclose(got, ref, atol=1e-6)
    assert "forward" not in vars(bn)  # the layer's own forward again
    whole = model(x)  # outside: the statistics of all 8 rows
    assert torch.allclose(whole, (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias,
                          atol=1e-6)


def test_batch_norm_models_get_one_forward_per_step_values_from_stacked_forwards(spec_factory, caplog):
    spec = spec_factory(model={"name": "resnet9", "width": 0.125}, eval_batch_size=64, steps=13, snapshot_every=13)
    problem = build.build_problem(spec)
    model = problem.model
    use_batch_statistics(model)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    steps = range(13)  # 64 // 16 = 4 steps a forward: 4, 4, 4 and 1
    with caplog.at_level("INFO", logger="landscope"):
        got = replay.losses_at(problem, model, steps)
    assert "measuring them as before" not in caplog.text  # the stacked forwards (pools as maxima) stood
    assert torch.equal(got, torch.stack([replay.loss_at(problem, model, s) for s in steps]))
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())  # no running statistics written
    assert not any("forward" in vars(m) for m in model.modules())


def test_replayed_batch_norm_run_measures_x_k_as_per_step_forwards(tmp_path, spec_factory):
    import polars as pl

    spec = spec_factory(model={"name": "resnet9", "width": 0.125}, steps=10, snapshot_every=5)
    results, ckpt, drifts = run_pipeline(spec, tmp_path)
    assert drifts == [0.0, 0.0]
    steps = pl.read_parquet(f"{results}/tables/steps/**/*.parquet").sort("step")
    problem = build.build_problem(spec)
    problem.model.load_state_dict(torch.load(ckpt / "minimizer.pt", weights_only=True)["model"])
    use_batch_statistics(problem.model)
    expected = [replay.loss_at(problem, problem.model, s).item() for s in range(10)]
    assert steps["batch_loss_at_min"].to_list() == expected


def test_a_shortcut_that_rounds_differently_gives_way_to_the_reference(spec_factory, monkeypatch, caplog):
    spec = spec_factory(model={"name": "mlp", "width": 8}, eval_batch_size=40, steps=40, snapshot_every=40)
    problem = build.build_problem(spec)
    model = problem.model.eval()
    steps = range(3, 40)
    exact = replay.losses_at(problem, model, steps)
    shortcut = replay.distinct_sample_losses

    def one_ulp_off(*args, **kw):  # on one step of the first group
        out = shortcut(*args, **kw)
        out[1] = torch.nextafter(out[1], torch.tensor(math.inf, dtype=out.dtype))
        return out

    monkeypatch.setattr(replay, "distinct_sample_losses", one_ulp_off)
    with caplog.at_level("INFO", logger="landscope"):
        got = replay.losses_at(problem, model, steps)
    assert torch.equal(got, exact) and torch.equal(got, stacked_reference(problem, model, steps, 2))
    assert "measuring them as before" in caplog.text


# ----------------------------------------------------------------------------------- max pooling as maxima
def test_maxima_pooling_by_hand():
    x = torch.tensor([[[[1.0, 5.0, -2.0, 0.0],
                        [3.0, 2.0, 7.0, -1.0],
                        [0.5, -4.0, 6.0, 6.0],
                        [9.0, 1.0, -3.0, 2.5]]]])
    assert replay.maxima_pool2d(x, 2).tolist() == [[[[5.0, 7.0], [9.0, 6.0]]]]
    # 3x3 windows, stride 1: the four windows' maxima
    assert replay.maxima_pool2d(x, 3, stride=1).tolist() == [[[[7.0, 7.0], [9.0, 7.0]]]]
    # a 1x3 window, stride (1, 1): the three running maxima of each row
    assert replay.maxima_pool2d(x, (1, 3), 1).tolist() == [[[[5.0, 5.0], [7.0, 7.0], [6.0, 6.0], [9.0, 2.5]]]]
    assert replay.maxima_pool2d(x, (4, 4)).tolist() == [[[[9.0]]]]  # a global pool


@pytest.mark.parametrize("shape, args, kwargs", [
    ((64, 16, 8, 8), (2,), {}),  # ResNet9's and the CNN's 2x2 pools
    ((5, 3, 7, 9), (2,), {}),  # odd sides: the last row and column are dropped, as by the kernel
    ((5, 3, 7, 9), (3,), {"stride": 2}),  # overlapping windows
    ((5, 3, 7, 9), ((2, 3),), {"stride": (1, 2)}),
    ((4, 8, 4, 4), ((4, 4),), {}),  # the global pool of ResNet9 on 32x32 images
    ((4, 8, 1, 1), ((1, 1),), {}),  # ... and on 8x8 ones
    ((3, 6, 6), (2,), {}),  # no batch dimension
    ((2, 3, 6, 6), ((2, 1),), {"stride": 2}),  # a window of 1 along a strided dimension
    ((2, 3, 6, 6), ((1, 1),), {"stride": 2}),  # subsampling only
])
def test_maxima_pooling_is_the_kernel_bit_for_bit(shape, args, kwargs):
    torch.manual_seed(0)
    x = torch.randn(*shape).relu()  # zeros tie, as after a ReLU
    x.view(-1)[5] = math.nan
    with torch.inference_mode():
        expected = F.max_pool2d(x, *args, **kwargs)
        got = replay.maxima_pool2d(x, *args, **kwargs)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert torch.equal(got.isnan(), expected.isnan())  # NaN propagates as in the kernel
    assert torch.equal(got.nan_to_num(), expected.nan_to_num())
    assert got.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()  # never a view of the input
    assert got.is_contiguous() and expected.is_contiguous()  # dense, as the kernel's (a model may .view() it)


@pytest.mark.parametrize("kwargs", [{"padding": 1}, {"dilation": 2}, {"ceil_mode": True}, {"return_indices": True}])
def test_maxima_pooling_leaves_other_pools_to_the_kernel(kwargs):
    x = torch.randn(2, 3, 7, 7)
    assert replay.maxima_pool2d(x, 3, 2, **kwargs) is None
    with replay.MaximaPooling():  # and the mode runs them as written
        got = F.max_pool2d(x, 3, 2, **kwargs)
    expected = F.max_pool2d(x, 3, 2, **kwargs)
    pairs = zip(got, expected) if isinstance(got, tuple) else [(got, expected)]  # (values, indices) or values
    assert all(torch.equal(a, b) for a, b in pairs)


def test_maxima_pooling_mode_takes_the_models_pools(monkeypatch):
    calls = []
    real = replay.maxima_pool2d
    monkeypatch.setattr(replay, "maxima_pool2d", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
    x = torch.randn(6, 1, 8, 8)
    with torch.inference_mode():
        expected = F.max_pool2d(model(x), (4, 4))
        with replay.MaximaPooling():
            got = F.max_pool2d(model(x), (4, 4))  # a module's pool and a functional one
    assert torch.equal(got, expected) and calls == [2, (4, 4)]


def test_cnn_losses_at_x_k_with_pooling_as_maxima_equal_one_forward_per_stack(spec_factory, monkeypatch, caplog):
    spec = spec_factory(model={"name": "cnn", "channels": 8, "c1": 4}, eval_batch_size=64,
                        batch_size=16, steps=20, snapshot_every=20)
    problem = build.build_problem(spec)
    model = problem.model.eval()
    pooled = []
    real = replay.maxima_pool2d
    monkeypatch.setattr(replay, "maxima_pool2d", lambda *a, **k: pooled.append(1) or real(*a, **k))
    with caplog.at_level("INFO", logger="landscope"):
        got = replay.losses_at(problem, model, range(20))
    assert pooled and "measuring them as before" not in caplog.text  # the fast path took the pools, and stood
    assert torch.equal(got, stacked_reference(problem, model, range(20), 4))
