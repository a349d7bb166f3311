"""Mean squared displacement and its exponent against closed forms: ballistic drift, a random walk, a converging
sequence, and Langevin dynamics on a quadratic bowl with its exact discrete stationary spread."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from landscope.measures.diffusion import default_lags, diffusion_summary, drift, msd, msd_exponent


def test_msd_pairs_on_uneven_steps_and_ballistic_exponent():
    # Steps 0, 1, 3, 4: differences 1 (0-1, 3-4), 2 (1-3), 3 (0-3, 1-4), 4 (0-4).
    # Ballistic x(s) = x0 + v s: ||x(s + L) - x(s)||^2 = |v|^2 L^2 exactly, so alpha = 2 with zero scatter.
    v = np.array([3.0, -4.0])  # |v|^2 = 25
    steps = [0, 1, 3, 4]
    xs = [np.array([1.0, 2.0]) + v * s for s in steps]
    m = msd(xs, steps)
    assert m.lags.tolist() == [1, 2, 3, 4] and m.n_pairs.tolist() == [2, 1, 2, 1]
    assert m.msd == pytest.approx(25.0 * np.array([1, 4, 9, 16]), rel=1e-14)
    e = msd_exponent(m.lags, m.msd)
    assert e.alpha == pytest.approx(2.0, abs=1e-12) and e.se == pytest.approx(0.0, abs=1e-12) and e.n_lags == 4
    # an explicit lag grid: a lag no pair realises (5) is dropped
    m = msd(xs, steps, lags=[3, 5, 1])
    assert m.lags.tolist() == [1, 3] and m.n_pairs.tolist() == [2, 2]


def test_msd_accepts_tensors_and_rejects_bad_input():
    steps = np.arange(0, 50, 5)
    xs = torch.arange(10, dtype=torch.float32, requires_grad=True)[:, None] * torch.tensor([1.0, 1.0])
    m = msd(xs, steps)  # an (n, d) tensor; x(s) = (s/5)(1, 1): MSD(L) = 2 (L/5)^2
    assert m.msd == pytest.approx(2 * (m.lags / 5.0) ** 2, rel=1e-14)
    m = msd(list(xs.detach().double()), steps)  # a list of vectors
    assert m.lags.tolist() == list(range(5, 50, 5)) and m.n_pairs.tolist() == list(range(9, 0, -1))
    with pytest.raises(ValueError, match="strictly increasing"):
        msd(xs, [0, 1, 1, 2, 3, 4, 5, 6, 7, 8])
    with pytest.raises(ValueError, match="iterates and"):
        msd(xs, steps[:5])


def test_default_lags_thin_to_a_log_grid():
    s = np.arange(1001)
    lags = default_lags(s, max_lags=20)
    assert lags[0] == 1 and lags[-1] == 1000 and len(lags) <= 20
    # log-spaced: the ratio of consecutive lags stays near 1000^(1/19) = 1.44 once rounding stops mattering
    ratios = lags[1:] / lags[:-1]
    assert np.all(ratios[-8:] == pytest.approx(1000 ** (1 / 19), rel=0.05))
    assert default_lags([0, 1, 3, 4]).tolist() == [1, 2, 3, 4]
    # past 2000 checkpoints only log-spaced offsets are looked at; the ends of the range are still there
    lags = default_lags(np.arange(0, 5000, 2))
    assert lags[0] == 2 and lags[-1] == 4998 and len(lags) <= 40 and np.all(lags % 2 == 0)


def test_random_walk_exponent_is_one():
    # x_{t+1} = x_t + xi_t, xi ~ N(0, I_d): E||x_{t+L} - x_t||^2 = d L, alpha = 1.
    # Tolerance: the time-averaged MSD of a Brownian path of N steps at lag L has relative variance
    # 4L / (3N) per coordinate (the ergodicity-breaking parameter), so 4L / (3 N d) over d coordinates:
    # at the longest fitted lag L = 200 with N = 2000, d = 50 the relative SD is 0.05, at L = 1 it is
    # 0.005; spread over a log-lag range of ln 200 = 5.3 the slope's error is ~0.01-0.02. 0.05 is >= 3 SD.
    rng = np.random.default_rng(0)
    d, n = 50, 2000
    xs = np.cumsum(rng.normal(size=(n, d)), axis=0)
    m = msd(xs, np.arange(n))
    assert m.msd[0] == pytest.approx(d, rel=0.02)  # lag 1: mean of d (N - 1) chi^2_1 draws, rel SD 0.0045
    e = msd_exponent(m.lags, m.msd, lag_max=200)
    assert e.alpha == pytest.approx(1.0, abs=0.05)
    assert 0 < e.se < 0.05


def test_converging_sequence_exponent_is_zero_after_the_transient():
    # x_t = x* + r^t u + sigma xi_t (|u| = 1, r = 0.9, xi ~ N(0, I_d)). Noiseless, the MSD is exactly
    # (1 - r^L)^2 sum_{t < N - L} r^(2t) / (N - L): a converging path looks ballistic at first (alpha ~ 2 at
    # short lags, since 1 - r^L ~ L (1 - r)), which is why the exponent is read on a window after the
    # plateau. After t = 300 (r^300 = 2e-14 << sigma) the MSD is the noise floor 2 d sigma^2 at every lag.
    rng = np.random.default_rng(1)
    d, n, r, sigma = 20, 1000, 0.9, 1e-6
    t = np.arange(n)
    x_star = rng.normal(size=d)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    clean = x_star + (r ** t)[:, None] * u
    m = msd(clean, t, lags=[1, 2, 5, 10, 50, 200])
    exact = [(1 - r**L) ** 2 * np.sum(r ** (2.0 * np.arange(n - L))) / (n - L) for L in m.lags]
    assert m.msd == pytest.approx(exact, rel=1e-10)
    assert msd_exponent(m.lags, m.msd, lag_max=2).alpha == pytest.approx(math.log2(exact[1] / exact[0]))
    # ratio (1 - r^2)^2 / (1 - r)^2 * 999 / 998 (the sums over t agree to r^1996): alpha 1.85, nearly ballistic
    assert math.log2(exact[1] / exact[0]) == pytest.approx(math.log2(0.19**2 / 0.1**2 * 999 / 998), rel=1e-12)

    noisy = clean + sigma * rng.normal(size=(n, d))
    tail = t >= 300
    m = msd(noisy[tail], t[tail])
    # each lag L <= 350 averages (700 - L) d chi^2 draws: relative SD <= sqrt(2 / (350 * 20)) = 0.017
    fitted = m.msd[m.lags <= 350]
    assert fitted == pytest.approx(np.full(fitted.size, 2 * d * sigma**2), rel=0.1)
    e = msd_exponent(m.lags, m.msd, lag_max=350)
    assert e.alpha == pytest.approx(0.0, abs=0.02)


def test_langevin_on_a_quadratic_bowl_saturates_at_the_exact_spread():
    # Euler-Maruyama for dx = -lam x dt + sqrt(2T) dW on f = lam/2 |x|^2: x <- a x + sqrt(2 eta T) xi with
    # a = 1 - eta lam. Its exact stationary variance per coordinate is v = 2 eta T / (1 - a^2) (T / lam = 0.5
    # in the continuous limit; here 0.5025), and started from that distribution the process is stationary with
    # E||x_{t+L} - x_t||^2 = 2 d v (1 - a^L) exactly: ~ 2 d v eta lam L at short lags (alpha ~ 1), the plateau
    # 2 d v at lags >> 1 / (eta lam) = 100 steps (alpha ~ 0).
    rng = np.random.default_rng(2)
    d, n, eta, lam, temp = 100, 20000, 0.01, 1.0, 0.5
    a = 1 - eta * lam
    v = 2 * eta * temp / (1 - a**2)
    xs = np.empty((n, d))
    xs[0] = math.sqrt(v) * rng.normal(size=d)
    noise = math.sqrt(2 * eta * temp) * rng.normal(size=(n, d))
    for i in range(1, n):
        xs[i] = a * xs[i - 1] + noise[i]
    short, long = np.arange(1, 11), np.array([1000, 1500, 2000, 3000])
    m = msd(xs, np.arange(n), lags=np.concatenate([short, long]))
    exact = 2 * d * v * (1 - a ** m.lags.astype(float))
    # Tolerances: at lag L the MSD averages (N - L) d squared increments; successive increments are correlated
    # over ~1 / (eta lam) = 100 steps at long lags, leaving ~190 d = 19000 effective chi^2_1 draws, relative
    # SD sqrt(2 / 19000) = 0.01; at short lags the increments are nearly independent (relative SD 0.001).
    assert m.msd[:10] == pytest.approx(exact[:10], rel=0.01)
    assert m.msd[10:] == pytest.approx(np.full(4, 2 * d * v), rel=0.04)
    # the closed form's own exponent on lags 1..10 is 0.980 (not 1: a^L bends already), on 1000..3000 ~ 1e-5
    e_short, e_long = msd_exponent(m.lags, m.msd, lag_max=10), msd_exponent(m.lags, m.msd, lag_min=1000)
    exact_short = msd_exponent(short, 2 * d * v * (1 - a**short.astype(float))).alpha
    assert exact_short == pytest.approx(1.0, abs=0.03)
    assert e_short.alpha == pytest.approx(exact_short, abs=0.01) and e_short.n_lags == 10
    assert e_long.alpha == pytest.approx(0.0, abs=0.05) and e_long.n_lags == 4


def test_drift_of_exact_and_noisy_lines():
    d = drift([0, 250, 500, 750, 1000], [2.0, 1.75, 1.5, 1.25, 1.0])
    # slope -0.001 per step, mean 1.5, change over the window -1.0: rel_change = -1 / 1.5
    assert (d.slope, d.mean, d.n) == (pytest.approx(-0.001, abs=1e-15), 1.5, 5)
    assert d.rel_change == pytest.approx(-2 / 3, abs=1e-12) and d.slope_se == pytest.approx(0.0, abs=1e-15)
    # a noisy series with a gap: slope and SE as ordinary least squares gives them
    rng = np.random.default_rng(4)
    s = np.arange(0, 100, 5.0)
    y = 3 + 0.01 * s + 0.1 * rng.normal(size=s.size)
    y[3] = np.nan
    d = drift(s, y)
    ref = scipy.stats.linregress(np.delete(s, 3), np.delete(y, 3))
    assert (d.slope, d.slope_se, d.n) == (pytest.approx(ref.slope, rel=1e-12), pytest.approx(ref.stderr, rel=1e-10),
                                          19)


def test_diffusion_summary_on_a_window_after_the_plateau():
    # Checkpoints every 10 steps to 1000. Before step 500 the loss falls; from 500 on it is flat (0.1), the
    # gradient norm is flat (0.5), lambda_max rises by 0.002 per step (measured at every other checkpoint),
    # and the iterates random-walk with unit variance per step and coordinate: MSD(L) = d L, alpha = 1.
    # Tolerance on alpha: 51 checkpoints in the window, lags to 25 checkpoints (lag_fraction 0.5); relative
    # variance of the MSD there 4 * 25 / (3 * 51 * d) = 0.00065 for d = 1000 (SD 0.026): 0.1 is ~4 SD.
    rng = np.random.default_rng(6)
    d = 1000
    steps = np.arange(0, 1001, 10)
    xs = np.cumsum(math.sqrt(10) * rng.normal(size=(steps.size, d)), axis=0)
    loss = np.where(steps < 500, 2.0 - 0.0038 * steps, 0.1)
    grad = np.where(steps < 500, 3.0, 0.5)
    lam = 10 + 0.002 * steps.astype(float)
    lam[1::2] = np.nan
    s = diffusion_summary(steps, xs, loss, grad, series={"lambda_max": lam}, start_step=500)
    assert (s.start_step, s.end_step, s.n_checkpoints) == (500, 1000, 51)
    assert s.msd.lags[0] == 10 and s.msd.n_pairs[0] == 50
    assert s.exponent.alpha == pytest.approx(1.0, abs=0.1)
    assert s.exponent.n_lags == np.count_nonzero(s.msd.lags <= 250) >= 15  # the default lags up to half the span
    assert s.loss.slope == 0.0 and s.loss.rel_change == 0.0 and s.grad_norm.rel_change == 0.0
    # lambda_max over 500..1000: slope 0.002, mean 10 + 0.002 * 750 = 11.5, rel_change 0.002 * 500 / 11.5
    lm = s.series["lambda_max"]
    assert lm.slope == pytest.approx(0.002, rel=1e-12) and lm.n == 26
    assert lm.rel_change == pytest.approx(1 / 11.5, rel=1e-12)
    row = s.row()
    assert row["exponent"] == s.exponent.alpha and row["lambda_max_rel_change"] == lm.rel_change
    assert {"loss_slope", "grad_norm_rel_change_se", "n_lags", "start_step"} <= set(row)
    with pytest.raises(ValueError, match="need >= 3"):
        diffusion_summary(steps, xs, loss, grad, start_step=990)
    with pytest.raises(ValueError, match="arguments of their own"):
        diffusion_summary(steps, xs, loss, grad, series={"loss": loss})
