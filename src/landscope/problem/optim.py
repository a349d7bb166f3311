"""Optimizers and learning-rate schedules.

``make_optimizer(spec, params)`` builds the optimizer of an experiment's ``optimizer:`` section;
``lr_at(opt, sched, steps, k)`` is the learning rate of step ``k`` (0-based), a pure function of the
step, so a schedule has no state to checkpoint. The training loop sets ``group["lr"] = lr_at(...)``
before every step; for the adaptive step sizes below that value is the base or cap gamma.

Notation: g_k = grad f_{i_k}(x_k), the mini-batch gradient (summed over all parameters for norms);
f_{i_k}(x_k) the batch loss and f_{i_k}* the batch's f_i* (mean over its samples); lr_k the scheduled
learning rate. Optimizers whose step needs f_{i_k}(x_k) - f_{i_k}* (sps_max, decsps, ngn) expose
``set_batch_info(loss, f_star)``, to be called after the backward pass and before every ``step()``.
All optimizer state is tensors and Python numbers in ``opt.state``, so ``state_dict()`` survives
``torch.load(weights_only=True)`` and a resumed run continues bitwise.
"""

from __future__ import annotations

import math

import torch

from landscope.settings import section_defaults

# The schema's defaults of the ``optimizer:`` and ``schedule:`` sections; the code reads every key
# through these, so an absent key means the schema default.
OPTIMIZER_DEFAULTS = section_defaults("optimizer")
SCHEDULE_DEFAULTS = section_defaults("schedule")
OPTIMIZERS = ("sgd", "adam", "adamw", "nadamw", "sps_max", "decsps", "ngn", "adagrad_norm_max",
              "nsgdm")
SCHEDULES = ("constant", "cosine", "onecycle", "warmup_cosine", "polynomial")


def _get(spec: dict, defaults: dict, key: str):
    value = spec.get(key)
    return defaults[key] if value is None else value


# ----------------------------------------------------------------------------------- optimizers
def make_optimizer(spec: dict, params) -> torch.optim.Optimizer:
    """The optimizer named by ``spec["name"]`` (keys as in the schema's ``optimizer:`` section)."""
    def opt(key):
        return _get(spec, OPTIMIZER_DEFAULTS, key)

    name, lr, wd = opt("name"), float(opt("lr")), float(opt("weight_decay"))
    if opt("momentum_follows_lr") and name != "nsgdm":
        raise ValueError(f"optimizer {name}: momentum_follows_lr applies to nsgdm only; remove it or set it false")
    momentum, betas, eps = float(opt("momentum")), tuple(float(b) for b in opt("betas")), float(opt("eps"))
    if name == "sgd":
        if opt("nesterov") and momentum == 0:
            raise ValueError("optimizer sgd: nesterov: true needs momentum > 0; set optimizer.momentum")
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=bool(opt("nesterov")),
                               weight_decay=wd, foreach=False)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=wd, foreach=False)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd, foreach=False)
    if name == "nadamw":
        return NAdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    if name in ("sps_max", "decsps", "ngn") and wd > 0:
        raise ValueError(f"optimizer {name}: weight_decay is not supported (its step size needs the loss "
                         "and the gradient of the same function); set optimizer.weight_decay: 0")
    if name == "sps_max":
        return SPSMax(params, lr=lr, c=float(opt("c")))
    if name == "decsps":
        return DecSPS(params, lr=lr, c0=float(opt("c0")))
    if name == "ngn":
        return NGN(params, lr=lr)
    if name == "adagrad_norm_max":
        return AdaGradNormMax(params, lr=lr, b0=float(opt("b0")), weight_decay=wd)
    if name == "nsgdm":
        if momentum >= 1:
            raise ValueError(f"optimizer nsgdm: momentum must be < 1, got {momentum}")
        return NSGDM(params, lr=lr, momentum=momentum, weight_decay=wd,
                     momentum_follows_lr=bool(opt("momentum_follows_lr")))
    raise ValueError(f"unknown optimizer {name!r}; available: {', '.join(OPTIMIZERS)}")


def _sq_norm(tensors) -> float:
    """sum_j ||t_j||^2, accumulated in float64 (float32 on MPS, which has no float64)."""
    tensors = list(tensors)
    if not tensors:
        return 0.0
    dtype = torch.float32 if tensors[0].device.type == "mps" else torch.float64
    return float(torch.stack([t.detach().to(dtype).square().sum() for t in tensors]).sum())


def _run_closure(closure):
    """torch's optimizer protocol: re-evaluate the loss with gradients when a closure is given."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class NAdamW(torch.optim.Optimizer):
    """NAdam with decoupled weight decay, as AlgoPerf's NAdamW baseline (the paper's Fig. 7a-d).

    With t = k + 1 and g = g_k (Dozat 2016; Choi et al. 2019, arXiv 1910.05446, Table 1):
        x   <- x (1 - lr wd)
        m_t  = b1 m_{t-1} + (1 - b1) g,        v_t = b2 v_{t-1} + (1 - b2) g^2
        x   <- x - lr / (1 - b1^t) * (b1 m_t + (1 - b1) g) / (sqrt(v_t) / sqrt(1 - b2^t) + eps)
    Source: mlcommons/algorithmic-efficiency, reference_algorithms/paper_baselines/nadamw/pytorch/
    submission.py (which updates m in place and undoes it; here the Nesterov term is a temporary).
    torch.optim.NAdam is a different algorithm (it decays the momentum coefficient with
    momentum_decay and cannot reproduce this one).
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = _run_closure(closure)
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1 - lr * wd)
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                nesterov = m.mul(b1).add_(g, alpha=1 - b1)
                denom = (v.sqrt() / math.sqrt(1 - b2 ** t)).add_(eps)
                p.addcdiv_(nesterov, denom, value=-lr / (1 - b1 ** t))
        return loss


class _ScalarStep(torch.optim.Optimizer):
    """x_{k+1} = x_k - gamma_k d_k: one scalar step size gamma_k for all parameters.

    Subclasses give ``_step_size(group, params, grads) -> (gamma_k, directions)``, where grads are
    the gradients plus ``weight_decay * x`` where that is configured. The step size of the
    last step is kept in ``last_step_size`` (a float; not part of the state). Scalar state (step
    counters, accumulators) lives in ``self.state`` of the first parameter, as Python numbers.
    """

    name = ""

    def __init__(self, params, defaults: dict, positive: tuple[str, ...] = ()):
        for key in positive:
            if not defaults[key] > 0:
                raise ValueError(f"optimizer {self.name}: {key} must be > 0, got {defaults[key]}")
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError(f"optimizer {self.name}: its step size is global; give one parameter group, "
                             f"not {len(self.param_groups)}")
        self.last_step_size: float | None = None

    def _scalars(self) -> dict:
        return self.state[self.param_groups[0]["params"][0]]

    def _step_size(self, group: dict, grads: list) -> tuple[float, list]:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        loss = _run_closure(closure)
        group = self.param_groups[0]
        params = [p for p in group["params"] if p.grad is not None]
        wd = group.get("weight_decay", 0.0)
        grads = [p.grad.add(p, alpha=wd) if wd else p.grad for p in params]
        gamma, directions = self._step_size(group, params, grads)
        if gamma != 0:
            for p, d in zip(params, directions):
                p.add_(d, alpha=-gamma)
        self.last_step_size = gamma
        return loss


class _Polyak(_ScalarStep):
    """A step size built from f_{i_k}(x_k) - f_{i_k}*, given by ``set_batch_info`` before each step."""

    def __init__(self, params, defaults: dict, positive: tuple[str, ...] = ()):
        super().__init__(params, defaults, positive)
        self._batch: tuple[float, float] | None = None

    def set_batch_info(self, loss: torch.Tensor, f_star: torch.Tensor) -> None:
        """The batch loss f_{i_k}(x_k) and the batch's f_{i_k}* (0-dim tensors) for the next step."""
        self._batch = (float(loss), float(f_star))

    def _gap(self) -> float:
        """h_k = max(f_{i_k}(x_k) - f_{i_k}*, 0), consumed: every step needs a fresh one."""
        if self._batch is None:
            raise RuntimeError(
                f"optimizer {self.name} needs the batch loss f_i(x_k) and f_i* before every step: call "
                "opt.set_batch_info(loss, f_star) between backward() and step() (landscope's training "
                "loop does; f_i* comes from the experiment's f_i_star: a number, or 'exact')")
        loss, f_star = self._batch
        self._batch = None
        return max(loss - f_star, 0.0)


class SPSMax(_Polyak):
    """SPS_max (Loizou, Vaswani, Laradji, Lacoste-Julien, AISTATS 2021, arXiv 2002.10542):
        gamma_k = min{ (f_{i_k}(x_k) - f_{i_k}*) / (c ||g_k||^2), gamma_b },   x_{k+1} = x_k - gamma_k g_k

    with gamma_b = lr_k (the scheduled learning rate) and c = ``c``. The gap is clamped at 0 (an
    f_i* above the loss gives no step, not an ascent step); ||g_k|| = 0 gives gamma_k = gamma_b.
    """

    name = "sps_max"

    def __init__(self, params, lr: float, c: float = 0.5):
        super().__init__(params, {"lr": lr, "c": c}, positive=("c",))

    def _step_size(self, group, params, grads):
        h, g2 = self._gap(), _sq_norm(grads)
        gamma = group["lr"] if g2 == 0 else min(h / (group["c"] * g2), group["lr"])
        return gamma, grads


class DecSPS(_Polyak):
    """DecSPS (Orvieto, Lacoste-Julien, Loizou, NeurIPS 2022, arXiv 2205.04583, eq. (8)):
        gamma_k = (1 / c_k) min{ (f_{i_k}(x_k) - f_{i_k}*) / ||g_k||^2, c_{k-1} gamma_{k-1} },
        c_k = c0 sqrt(k + 1),  c_{-1} = c0,  gamma_{-1} = gamma_b,  x_{k+1} = x_k - gamma_k g_k.

    Here gamma_b = lr_0 and, in addition, gamma_k <= lr_k: with a constant schedule this extra cap
    never binds (gamma_k <= gamma_{k-1} <= ... <= gamma_b), so it is exactly DecSPS; with a
    decaying schedule the schedule also bounds the step. Gap clamped at 0 as in SPS_max;
    ||g_k|| = 0 drops the first term. State: ``step`` (k) and ``gamma`` (gamma_{k-1}).
    """

    name = "decsps"

    def __init__(self, params, lr: float, c0: float = 1.0):
        super().__init__(params, {"lr": lr, "c0": c0}, positive=("c0",))

    def _step_size(self, group, params, grads):
        h, g2 = self._gap(), _sq_norm(grads)
        state, c0 = self._scalars(), group["c0"]
        k = state.get("step", 0)
        c_k = c0 * math.sqrt(k + 1)
        gamma = group["lr"]
        if g2 > 0:
            gamma = min(gamma, h / (c_k * g2))
        if "gamma" in state:
            gamma = min(gamma, c0 * math.sqrt(k) * state["gamma"] / c_k)
        state["step"], state["gamma"] = k + 1, gamma
        return gamma, grads


class NGN(_Polyak):
    """NGN, non-negative Gauss-Newton step (Orvieto & Xiao 2024, arXiv 2407.04358):
        gamma_k = gamma / (1 + gamma ||g_k||^2 / (2 (f_{i_k}(x_k) - f_{i_k}*))),  x_{k+1} = x_k - gamma_k g_k

    with gamma = lr_k. The paper writes 2 f_i (losses with f_i* = 0); using f_i - f_i* is the same
    step there and applies NGN to f_i - f_i* >= 0 otherwise. A zero gap gives gamma_k = 0 (and
    gamma_k = gamma when ||g_k|| = 0).
    """

    name = "ngn"

    def __init__(self, params, lr: float):
        super().__init__(params, {"lr": lr})

    def _step_size(self, group, params, grads):
        h, g2, lr = self._gap(), _sq_norm(grads), group["lr"]
        if g2 == 0:
            return lr, grads
        return (0.0 if h == 0 else lr / (1 + lr * g2 / (2 * h))), grads


class AdaGradNormMax(_ScalarStep):
    """AdaGrad-norm-max as analysed in the paper's Theorem 7 (Islamov, Ajroldi, Orvieto, Lucchi,
    NeurIPS 2024):

        c_k^2 = max{c_{k-1}^2, ||g_k||^2},  c_{-1} = 0,
        b_k^2 = b_{k-1}^2 + c_k^2,          b_{-1} = b0,
        x_{k+1} = x_k - (lr_k / b_k) g_k

    so b_k^2 = b0^2 + sum_{t <= k} max_{s <= t} ||g_s||^2: the running maximum of the squared gradient
    norms is accumulated, and b0 is an offset under the square root (not a floor). b_k >= b0, so with
    b0 = 1 the step never exceeds lr_k. g_k includes weight_decay * x_k if set. State: ``max_sq_grad``
    (c_k^2) and ``b_sq`` (b_k^2).
    """

    name = "adagrad_norm_max"

    def __init__(self, params, lr: float, b0: float = 1.0, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "b0": b0, "weight_decay": weight_decay}, positive=("b0",))

    def _step_size(self, group, params, grads):
        state = self._scalars()
        state["max_sq_grad"] = max(state.get("max_sq_grad", 0.0), _sq_norm(grads))
        state["b_sq"] = state.get("b_sq", group["b0"] ** 2) + state["max_sq_grad"]
        return group["lr"] / math.sqrt(state["b_sq"]), grads


class NSGDM(_ScalarStep):
    """Normalized SGD with momentum (Cutkosky & Mehta, ICML 2020, arXiv 2002.03305), the paper's
    LSTM optimizer:

        m_k = beta_k m_{k-1} + (1 - beta_k) g_k,  m_{-1} = 0,   x_{k+1} = x_k - lr_k m_k / ||m_k||

    with ||m_k|| the norm over all parameters together; m_k = 0 gives no step. beta_k = ``momentum``
    (0 gives normalized SGD), or, with ``momentum_follows_lr``, beta_k = momentum * lr_k / lr: the
    schedule decays the momentum together with the learning rate, as the paper's LSTM runs decay
    both (lr = the peak learning rate, kept in the group as ``peak_lr``, since the training loop
    overwrites ``lr`` with lr_k). g_k includes weight_decay * x_k if set. State: ``momentum_buffer``
    per parameter.
    """

    name = "nsgdm"

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 momentum_follows_lr: bool = False):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                  "momentum_follows_lr": momentum_follows_lr, "peak_lr": lr})

    def _step_size(self, group, params, grads):
        beta, bufs = group["momentum"], []
        if group.get("momentum_follows_lr"):  # .get: a checkpoint from before the option has no such key
            beta = beta * group["lr"] / group["peak_lr"]
        for p, g in zip(params, grads):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"].mul_(beta).add_(g, alpha=1 - beta))
        norm = math.sqrt(_sq_norm(bufs))
        return (0.0 if norm == 0 else group["lr"] / norm), bufs


# ----------------------------------------------------------------------------------- schedules
def lr_at(opt: dict, sched: dict, steps: int, step: int) -> float:
    """Learning rate used at ``step`` (0-based) of a run with ``steps`` steps; lr = ``opt["lr"]``.

    constant       lr
    cosine         min_lr + (lr - min_lr) (1 + cos(pi k / steps)) / 2
    onecycle       torch.optim.lr_scheduler.OneCycleLR (three_phase=False) with total_steps = steps:
                   from lr / div_factor up to lr over the first pct_start * steps - 1 steps, then down
                   to lr / (div_factor * final_div_factor) at step steps - 1; both phases anneal by
                   anneal_strategy (cos: a half cosine, linear); the momentum is not cycled
    warmup_cosine  k < W: lr (w0 + (1 - w0) k / W), with w0 = warmup_init;
                   k >= W: min_lr + (lr - min_lr) (1 + cos(pi (k - W) / max(steps - W, 1))) / 2;
                   W = warmup_steps, or round(warmup_fraction * steps) (at most one of them set).
                   AlgoPerf's warm-up + cosine is warmup_init: 1e-10, min_lr: 0
    polynomial     min_lr + (lr - min_lr) (1 - k / steps)^power
    Steps past the end (k > steps - 1) continue each formula with its phase fraction held at 1.
    """
    def get(key):
        return _get(sched, SCHEDULE_DEFAULTS, key)

    base, name = float(opt["lr"]), get("name")
    if name == "onecycle" and get("anneal_strategy") not in ("cos", "linear"):
        raise ValueError(f"schedule onecycle: anneal_strategy must be cos or linear, got {get('anneal_strategy')!r}")
    if name == "constant":
        return base
    lo = float(get("min_lr"))
    if name == "cosine":
        return lo + 0.5 * (base - lo) * (1.0 + math.cos(math.pi * min(step / max(steps, 1), 1.0)))
    if name == "onecycle":
        return _onecycle(base, get, steps, step)
    if name == "warmup_cosine":
        w_steps, w_frac = int(get("warmup_steps")), float(get("warmup_fraction"))
        if w_steps and w_frac:
            raise ValueError("schedule warmup_cosine: set warmup_steps or warmup_fraction, not both")
        warm = w_steps or round(w_frac * steps)
        if step < warm:
            w0 = float(get("warmup_init"))
            return base * (w0 + (1.0 - w0) * step / warm)
        frac = min((step - warm) / max(steps - warm, 1), 1.0)
        return lo + 0.5 * (base - lo) * (1.0 + math.cos(math.pi * frac))
    if name == "polynomial":
        frac = min(step / max(steps, 1), 1.0)
        return lo + (base - lo) * (1.0 - frac) ** float(get("power"))
    raise ValueError(f"unknown schedule {name!r}; available: {', '.join(SCHEDULES)}")


def _onecycle(max_lr: float, get, steps: int, step: int) -> float:
    """OneCycleLR.get_lr of torch 2.x, operation for operation (so the values agree bitwise)."""
    initial = max_lr / float(get("div_factor"))
    final = initial / float(get("final_div_factor"))
    phases = [(float(float(get("pct_start")) * steps) - 1, initial, max_lr), (steps - 1, max_lr, final)]
    start = 0.0
    for i, (end, lr_from, lr_to) in enumerate(phases):
        if step <= end or i == len(phases) - 1:
            pct = min((step - start) / (end - start), 1.0) if end != start else 1.0
            if get("anneal_strategy") == "linear":
                return (lr_to - lr_from) * pct + lr_from
            return lr_to + (lr_from - lr_to) / 2.0 * (math.cos(math.pi * pct) + 1)
        start = end
    raise AssertionError("unreachable")

