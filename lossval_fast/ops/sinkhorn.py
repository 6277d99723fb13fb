"""The debiased Sinkhorn divergence with geomloss' exact semantics (docs/algorithms.md §2), on the pairwise primitive.

    S(a, x; b, y) = <a, F - FA> + <b, G - GB>        (debias=True; <a, F> + <b, G> without debiasing)

F, G, FA, GB are the potentials after geomloss' ε schedule (first value repeated, data-dependent length),
symmetric averaged updates and the final extrapolation at ε = blur^p. Gradients come from the envelope theorem,
never from unrolling: dS/da = F - FA, dS/db = G - GB, dS/dx_i = a_i (Σ_j P^xx_ij x_j - Σ_j P^xy_ij y_j) and
likewise for y, with the barycentres taken in the final extrapolation pass (online, no N x M matrix).

Masses are NOT normalised by default (LossVal's faithful mode: the batch carries Σ w, the validation set M);
``normalize=True`` turns both into probability measures first.
"""
from __future__ import annotations

import math
import numbers

import torch

from .. import op_checks
from . import backends
from .memory import default_memory_budget
from ..sinkhorn_loop import epsilon_schedule, log_weights, max_diameter, self_potential, sinkhorn_loop

__all__ = ["sinkhorn_divergence", "SinkhornLoss", "SinkhornCache", "epsilon_schedule", "max_diameter"]


MAX_SCALE = 1e150  # blur and diameter enter squared (ε = blur², the first ε = diameter²): both must stay finite


class SinkhornCache:
    """Reuse of the validation-side potential across calls.

    GB, the final y-y potential, depends only on (b, y, ε schedule): when LossVal compares every minibatch with the
    same validation set under a fixed diameter, it is computed once. The cache holds references to the tensors it
    was computed for, so a hit means the same storage at the same version (an in-place change is a miss).
    """

    def __init__(self):
        self._entry = None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key(b, y, eps_list, normalize):
        return (b.data_ptr(), b._version, tuple(b.shape), y.data_ptr(), y._version, tuple(y.shape), y.dtype,
                y.device, tuple(eps_list), bool(normalize))

    def get(self, b, y, eps_list, normalize=False):
        """GB for (b, y, schedule) as the caller passed them (before any normalisation), or None."""
        if self._entry is not None and self._entry[0] == self._key(b, y, eps_list, normalize):
            self.hits += 1
            return self._entry[3]
        self.misses += 1
        return None

    def put(self, b, y, eps_list, gb, normalize=False):
        self._entry = (self._key(b, y, eps_list, normalize), b, y, gb.detach())

    def clear(self):
        self._entry = None


def _check_inputs(a, x, b, y, blur, scaling, p, diameter, validate):
    """Shapes, dtypes and parameters (cheap, pure Python); the NaN/inf check runs only when `validate` is
    "python" (the C++ path does it in its own pass)."""
    x, y = op_checks.tensor(x, "x"), op_checks.tensor(y, "y")
    if x.dim() not in (2, 3) or y.dim() != x.dim():
        raise ValueError(f"x and y must both be (N, d) or both (B, N, d) point clouds, got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    batched = x.dim() == 3
    if batched and (x.shape[0] == 0 or y.shape[0] == 0):
        raise ValueError(f"a batch of point clouds must hold at least one problem (B >= 1), got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    xs, ys = (x, y) if batched else (x[None], y[None])
    for t, name in ((xs, "x"), (ys, "y")):
        if t.dtype not in op_checks.FLOAT_DTYPES:
            raise ValueError(f"{name} must be float32 or float64, got {t.dtype}")
        if t.shape[1] == 0:
            shape = tuple(t.shape if batched else t.shape[1:])
            raise ValueError(f"{name} must hold at least one point, got shape {shape}")
        if t.shape[2] == 0:
            raise ValueError(f"{name} must have at least one feature, got shape {tuple(t.shape)}")
    if xs.shape[0] != ys.shape[0]:
        raise ValueError(f"x and y must have the same batch size, got {xs.shape[0]} and {ys.shape[0]}")
    if xs.shape[2] != ys.shape[2]:
        raise ValueError(f"x and y must have the same number of features (d), got {xs.shape[2]} and {ys.shape[2]}")
    if x.dtype != y.dtype or x.device != y.device:
        raise ValueError(f"x and y must share dtype and device, got {x.dtype}/{x.device} and {y.dtype}/{y.device}")

    def weights(w, name, n):
        w = op_checks.tensor(w, name)
        expected = (xs.shape[0], n) if batched else (n,)
        if tuple(w.shape) == expected + (1,):  # (N, 1) or (B, N, 1), as geomloss accepts
            w = w[..., 0]
        if tuple(w.shape) != expected:
            raise ValueError(f"{name} must have shape {expected} (one weight per point), got {tuple(w.shape)}")
        if w.dtype != x.dtype or w.device != x.device:
            raise ValueError(f"{name} must have the dtype and device of the points ({x.dtype}, {x.device}), "
                             f"got {w.dtype}, {w.device}")
        return w if batched else w[None]

    a_s = weights(a, "a", xs.shape[1])
    b_s = weights(b, "b", ys.shape[1])
    blur = op_checks.positive_scalar(blur, "blur", MAX_SCALE)
    if isinstance(scaling, bool) or not isinstance(scaling, numbers.Real) or not 0 < float(scaling) < 1:
        raise ValueError(f"scaling must be in the open interval (0, 1), got {scaling!r}")
    if p != 2:
        raise ValueError(f"p must be 2 (the half squared Euclidean cost ½|x - y|²), got {p!r}")
    if diameter is not None:
        diameter = op_checks.positive_scalar(diameter, "diameter", MAX_SCALE)
    if validate == "python":
        for t, name in ((a_s, "a"), (xs, "x"), (b_s, "b"), (ys, "y")):
            op_checks.finite(t, name)
    return a_s, xs, b_s, ys, blur, float(scaling), diameter, batched


def _check_cost(cost) -> None:
    """geomloss' cost= takes a formula or a callable; here the cost is always ½|x - y|² and `cost` only picks how it
    is computed, so anything else is refused for every backend (torch included), never ignored."""
    if not (isinstance(cost, str) and cost in ("auto", "online", "stored")):
        shown = repr(cost) if isinstance(cost, str) else f"a {type(cost).__name__}"
        raise ValueError(f"cost must be 'auto', 'online' or 'stored' (how the built-in half squared Euclidean cost "
                         f"½|x - y|² is computed; custom cost functions are not supported), got {shown}")


def _stored_fits(n, m, itemsize, debias, device, memory_budget):
    budget = default_memory_budget(device) if memory_budget is None else int(memory_budget)
    # C_xy serves both directions. C_yy is counted even when GB comes from the cache, so that the mode (and with
    # it the last bits of the result) never depends on whether the cache was warm
    matrices = n * m + ((n * n + m * m) if debias else 0)
    return matrices * itemsize <= budget


def auto_stored(n: int, m: int, d: int, itemsize: int, debias: bool, device, memory_budget=None) -> bool:
    """cost="auto"'s choice: stored costs on CPU when the four matrices fit the budget and d >= 8 (below that,
    recomputing a dot product is as cheap as reading a stored entry)."""
    return device.type == "cpu" and d >= 8 and _stored_fits(n, m, itemsize, debias, device, memory_budget)


def _cpp_runner(cost_mode):
    def run(a, x, b, y, eps_list, debias, barycenters, gb):
        return torch.ops.lossval_fast.sinkhorn_potentials(a, x, b, y, eps_list, debias, barycenters, cost_mode, gb)
    return run


def _ops_runner(ops):
    """The one loop (lossval_fast.sinkhorn_loop) over one backend's softmin ops (Triton on GPU or under the
    interpreter), returning what the C++ op returns.

    As in the C++ loop, the potentials are kept in float64 and each bias is shifted by its largest finite value
    before it is rounded to the kernel's precision (softmin(h) = softmin(h - c) - eps c): a float32 bias of
    size |g| / eps would otherwise lose |g| / eps * 6e-8 in every exponent.
    """

    def one(a, x, b, y, eps_list, debias, barycenters, gb):
        """(S, dF, dG, GB, barycentres) for one problem, like the C++ op."""
        dtype = x.dtype
        clouds = {"xy": (x, y), "yx": (y, x), "xx": (x, x), "yy": (y, y)}

        def shifted(h):
            # largest finite entry, computed on the device (no boolean indexing: no host synchronisation)
            shift = torch.where(torch.isfinite(h), h, torch.full_like(h, -math.inf)).max()
            shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
            return (h - shift).to(dtype), shift

        def softmin(kind, h, eps):
            h, shift = shifted(h)
            return ops.softmin(*clouds[kind], h, eps).double() - eps * shift

        def final(kind, h, eps):  # (potential, barycentre or None)
            if not barycenters:
                return softmin(kind, h, eps), None
            h, shift = shifted(h)
            f, bary = ops.softmin_barycenter(*clouds[kind], h, eps)
            return f.double() - eps * shift, bary

        (F, bxy), (G, byx), fa, gb_out = sinkhorn_loop(softmin, log_weights(a), log_weights(b), eps_list,
                                                       debias=debias, gb=None if gb is None else (gb.double(), None),
                                                       final=final)
        if not debias:
            value = (a.double() * F).sum() + (b.double() * G).sum()
            return value.to(dtype), F.to(dtype), G.to(dtype), None, bxy, byx, None, None
        (FA, bxx), (GB, byy) = fa, gb_out
        dF, dG = F - FA, G - GB
        value = (a.double() * dF).sum() + (b.double() * dG).sum()
        return value.to(dtype), dF.to(dtype), dG.to(dtype), GB.to(dtype), bxy, byx, bxx, byy

    def run(a, x, b, y, eps_list, debias, barycenters, gb):
        results = [one(a[k], x[k], b[k], y[k], eps_list, debias, barycenters, None if gb is None else gb[k])
                   for k in range(x.shape[0])]

        def stack(i):
            parts = [r[i] for r in results]
            return torch.stack(parts) if parts[0] is not None else x.new_empty((0,))
        return [stack(i) for i in range(8)]

    return run


def debiasing_potential(w: torch.Tensor, x: torch.Tensor, eps_list: list[float], backend: str) -> torch.Tensor:
    """The self potential of one cloud (w (N,), x (N, d)) against itself, in float64: the compiled loop in one
    call on the cpp backend (several times faster than a Python loop of small softmin calls), else the one loop
    over the backend's softmin."""
    w64, x64 = w.double(), x.double()
    if backend == "cpp":
        return _cpp_runner(1)(w64[None], x64[None], w64[None], x64[None], eps_list, True, False, None)[3][0].double()
    kernels = backends.op_table(backend)

    def softmin(h, eps):
        shift = h.max()  # finite: log-weights are >= -1e5 and the potentials finite
        return kernels.softmin(x64, x64, h - shift, eps) - eps * shift
    return self_potential(softmin, log_weights(w64), eps_list)


class _SinkhornFunction(torch.autograd.Function):
    """S from the potentials, with envelope-theorem gradients (nothing is unrolled)."""

    @staticmethod
    def forward(ctx, a, x, b, y, eps_list, debias, runner, barycenters, gb):
        S, dF, dG, GB, bxy, byx, bxx, byy = runner(a.detach(), x.detach(), b.detach(), y.detach(), eps_list, debias,
                                                   barycenters, gb)
        ctx.debias = debias
        ctx.save_for_backward(a, x, b, y, dF, dG, bxy, byx, bxx, byy)
        ctx.mark_non_differentiable(GB)
        return S, GB

    @staticmethod
    def backward(ctx, grad, _grad_gb):
        if torch.is_grad_enabled():
            # create_graph=True: the envelope-theorem gradient below is built from potentials computed outside
            # autograd, so its own derivative (a Hessian-vector product) would silently miss their dependence on
            # the inputs. Refuse rather than return a wrong second derivative.
            raise RuntimeError("sinkhorn_divergence / SinkhornLoss: double backward (create_graph=True, Hessian-vector "
                               "products) is not supported by the compiled backends; use backend='torch', which "
                               "differentiates geomloss' tensorized formula twice as geomloss does")
        a, x, b, y, dF, dG, bxy, byx, bxx, byy = ctx.saved_tensors
        g = grad[:, None]
        ga = g * dF if ctx.needs_input_grad[0] else None
        gb = g * dG if ctx.needs_input_grad[2] else None
        gx = gy = None
        if ctx.needs_input_grad[1]:
            gx = (g * a)[..., None] * ((bxx if ctx.debias else x) - bxy)
        if ctx.needs_input_grad[3]:
            gy = (g * b)[..., None] * ((byy if ctx.debias else y) - byx)
        return ga, gx, gb, gy, None, None, None, None, None


def _in_float64(a_s, xs, b_s, ys, uniform: bool, **options) -> torch.Tensor:
    """The divergence when it is below what the potentials resolve in float32: the same computation in float64
    (uniform weights made anew in float64: at such a blur the float32 rounding of 1/N alone moves the value), in
    the inputs' dtype."""
    a64, b64 = (_uniform_weights(xs.double()), _uniform_weights(ys.double())) if uniform else \
        (a_s.double(), b_s.double())
    return sinkhorn_divergence(a64, xs.double(), b64, ys.double(), normalize=False, **options).to(xs.dtype)


def sinkhorn_divergence(a: torch.Tensor, x: torch.Tensor, b: torch.Tensor, y: torch.Tensor, *, blur: float = 0.05,
                        scaling: float = 0.5, p: int = 2, debias: bool = True, diameter: float | None = None,
                        normalize: bool = False, backend: str = "auto", cache: SinkhornCache | None = None,
                        cost: str = "auto", memory_budget: int | None = None, validate: bool = True,
                        _uniform: bool = False) -> torch.Tensor:
    """Sinkhorn divergence between the weighted clouds (a, x) and (b, y), exactly as geomloss'
    ``SamplesLoss("sinkhorn", p=2, blur, scaling, debias, diameter)(a, x, b, y)`` computes it.

    Parameters
    ----------
    a : (N,) or (B, N) weights; x : (N, d) or (B, N, d) points; b, y likewise with M points.
        Weights <= 0 get log-weight -1e5 in the potentials' updates (as in geomloss) but still enter the final
        linear term; masses are not normalised unless ``normalize=True``.
    blur : final temperature ε = blur²; scaling : ratio of successive blurs, in (0, 1); p : must be 2.
    diameter : largest distance scale, the first ε = diameter²; None computes geomloss' bounding-box diagonal
        (over the whole batch).
    backend : "auto" | "cpp" | "triton" | "cuda" | "torch" ("torch" = plain PyTorch,
        autograd through the last pass: double backward works).
    cache : a ``SinkhornCache`` to reuse GB (it depends only on b, y and the schedule) across calls.
    cost : "auto" | "online" | "stored": online never forms an N x M matrix; stored builds the four costs once
        with GEMMs when they fit ``memory_budget`` bytes, then every pass only reads them.
    validate : check a, x, b, y for NaN/inf (a host synchronisation on GPU; turn off inside captured steps), and
        that the result is finite.

    A blur so large against the diameter that float32 potentials cannot resolve the divergence runs in float64
    (the result in the inputs' dtype); beyond float64's resolution too, ValueError.

    Returns the divergence: a scalar, or (B,) for batched inputs. Differentiable in a, x, b and y.
    """
    _check_cost(cost)
    be = backends.resolve(backend, "softmin", x.device if isinstance(x, torch.Tensor) else torch.device("cpu"))
    in_cpp = be == "cpp"
    a_s, xs, b_s, ys, blur, scaling, diameter, batched = _check_inputs(
        a, x, b, y, blur, scaling, p, diameter, "python" if validate and not in_cpp else False)
    if in_cpp and (validate or diameter is None):
        # one C++ pass: NaN/inf by argument, and the bounding-box diameter
        box = torch.ops.lossval_fast.sinkhorn_prepare(a_s, xs, b_s, ys, bool(validate))
        if diameter is None:
            diameter = box
    b_given = b_s  # the cache keys on the weights as the caller gave them
    if normalize:
        a_s = a_s / a_s.sum(-1, keepdim=True)
        b_s = b_s / b_s.sum(-1, keepdim=True)
    if diameter is None:
        diameter = max_diameter(xs.detach(), ys.detach())
    if diameter <= 0:  # every point identical: geomloss would take log(0); any positive scale gives S = 0 here
        diameter = blur
    if _needs_float64(xs.dtype, blur, diameter):
        value = _in_float64(a_s, xs, b_s, ys, _uniform, blur=blur, scaling=scaling, p=p, debias=debias,
                            diameter=diameter, backend=backend, cost=cost, memory_budget=memory_budget,
                            validate=validate)
        return value if batched else value[0]
    eps_list = epsilon_schedule(2, diameter, blur, scaling)
    if be == "torch":   # autograd through the last pass (double backward works), as geomloss' tensorized backend
        divergence = backends.op_table("torch").sinkhorn_divergence
        values = torch.stack([divergence(a_s[k], xs[k], b_s[k], ys[k], eps_list, debias) for k in range(xs.shape[0])])
        if validate:
            _check_result(values, xs, ys)
        return values if batched else values[0]
    n, m, d = xs.shape[1], ys.shape[1], xs.shape[2]
    gb = cache.get(b_given, ys, eps_list, normalize) if (cache is not None and debias) else None
    fits = _stored_fits(n, m, xs.element_size(), debias, xs.device, memory_budget)
    if cost == "stored" and not fits:
        raise ValueError("cost='stored' needs the four cost matrices in memory_budget; use cost='online'")
    stored = cost == "stored" or (cost == "auto" and auto_stored(n, m, d, xs.element_size(), debias, xs.device,
                                                                 memory_budget))
    if be == "cpp":
        runner = _cpp_runner(1 if stored else 0)
    else:
        runner = _ops_runner(backends.op_table(be))
    barycenters = torch.is_grad_enabled() and (xs.requires_grad or ys.requires_grad)
    value, gb_out = _SinkhornFunction.apply(a_s, xs, b_s, ys, eps_list, debias, runner, barycenters, gb)
    if cache is not None and debias and gb is None:
        cache.put(b_given, ys, eps_list, gb_out, normalize)
    if validate:
        _check_result(value, xs, ys)
    return value if batched else value[0]


# The potentials carry an absolute rounding error of about eps·u (u the unit roundoff) while the divergence is at
# most of the order of the squared diameter: past these ratios blur²·u / diameter², float32 is redone in float64,
# and float64 is refused (at blur = 1e5·diameter the divergence is already its large-blur limit to ~1e-10).
_FLOAT32_LIMIT = 1e-6
_FLOAT64_LIMIT = 1e-6


def _needs_float64(dtype: torch.dtype, blur: float, diameter: float) -> bool:
    resolution = blur * blur * torch.finfo(dtype).eps / (diameter * diameter)
    if dtype == torch.float32:
        return resolution > _FLOAT32_LIMIT
    if resolution > _FLOAT64_LIMIT:
        largest = diameter * math.sqrt(_FLOAT64_LIMIT / torch.finfo(torch.float64).eps)
        raise ValueError(f"blur={blur:g} is {blur / diameter:.3g} times the diameter of the point clouds "
                         f"({diameter:.3g}): at ε = blur² the divergence is below the resolution of the potentials "
                         f"even in float64; use blur <= {largest:.3g} (the divergence is there already at its "
                         "large-blur limit) or rescale the points")
    return False


def _check_result(value: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> None:
    """Finite points can still overflow the costs ½|x - y|² (float32 above ~1e19): say so instead of returning
    NaN or inf (a host synchronisation, like the input check it goes with)."""
    if not bool(torch.isfinite(value.detach()).all()):
        largest = max(float(xs.detach().abs().max()), float(ys.detach().abs().max()))
        raise ValueError(f"the divergence is not finite for finite points (largest magnitude {largest:.3g} in "
                         f"{str(xs.dtype).replace('torch.', '')}): the costs ½|x - y|² overflow or cancel at this "
                         "scale; rescale the points (or use float64)")


class SinkhornLoss(torch.nn.Module):
    """Drop-in for geomloss' ``SamplesLoss("sinkhorn", p=2, blur=..., scaling=..., debias=..., diameter=...)``.

    ``loss(x, y)`` uses uniform weights 1/N and 1/M (as geomloss does); ``loss(a, x, b, y)`` takes the weights
    as given (not normalised unless ``normalize=True``). Inputs may carry a leading batch dimension (B, N, d),
    which returns a (B,) vector. ``cache=True`` keeps a SinkhornCache for repeated calls against the same y.

    geomloss' spelling works too: ``SinkhornLoss("sinkhorn", p=2, blur=0.05)``, positional arguments then in
    SamplesLoss' order (loss, p, blur, reach, diameter, scaling); the other losses, ``reach`` (unbalanced
    transport), ``potentials=True`` and custom costs are refused with a ValueError rather than ignored.
    Double backward (Hessian-vector products) runs with ``backend="torch"`` only.
    """

    _OWN_ORDER = ("blur", "scaling", "debias", "diameter", "p", "normalize", "backend", "cost", "cache", "validate")
    _GEOMLOSS_ORDER = ("p", "blur", "reach", "diameter", "scaling")
    # SamplesLoss options with a value that means what SinkhornLoss does anyway
    _GEOMLOSS_NEUTRAL = {"reach": None, "truncate": 5, "kernel": None, "cluster_scale": None, "potentials": False,
                         "verbose": False}

    def __init__(self, *args, **kwargs):
        super().__init__()
        options = self._arguments(args, kwargs)
        self.blur, self.scaling, self.debias = options["blur"], options["scaling"], options["debias"]
        self.diameter, self.p, self.normalize = options["diameter"], options["p"], options["normalize"]
        self.backend, self.cost, self.validate = options["backend"], options["cost"], options["validate"]
        self.cache = SinkhornCache() if options["cache"] else None

    @classmethod
    def _arguments(cls, args, kwargs) -> dict:
        """Our keywords with their defaults, from either our positional order or SamplesLoss' (after "sinkhorn")."""
        options = {"blur": 0.05, "scaling": 0.5, "debias": True, "diameter": None, "p": 2, "normalize": False,
                   "backend": "auto", "cost": "auto", "cache": False, "validate": True}
        geomloss = bool(args) and isinstance(args[0], str)
        if geomloss:
            if args[0] != "sinkhorn":
                raise ValueError(f"loss must be 'sinkhorn' (SinkhornLoss computes geomloss' Sinkhorn divergence "
                                 f"only), got {args[0]!r}")
            args = args[1:]
        order = cls._GEOMLOSS_ORDER if geomloss else cls._OWN_ORDER
        if len(args) > len(order):
            raise TypeError(f"SinkhornLoss takes at most {len(order)} positional arguments after "
                            f"{'the loss name' if geomloss else 'self'} ({', '.join(order)}), got {len(args)}")
        given = dict(zip(order, args))
        for name, value in kwargs.items():
            if name in given:
                raise TypeError(f"SinkhornLoss got multiple values for argument {name!r}")
            given[name] = value
        for name, neutral in cls._GEOMLOSS_NEUTRAL.items():
            if name in given:
                value = given.pop(name)
                if value is not neutral and value != neutral:
                    raise ValueError(f"{name}={value!r} is not supported (SinkhornLoss is geomloss' balanced "
                                     f"Sinkhorn divergence on samples, p=2); expected {name}={neutral!r}")
        unknown = sorted(set(given) - set(options))
        if unknown:
            raise TypeError(f"SinkhornLoss got unexpected keyword argument(s) {', '.join(unknown)}; expected some of "
                            f"{', '.join(options)}")
        options.update(given)
        # checked now (the same rules as every call), so a mistake shows where the loss is built
        if options["p"] != 2:
            raise ValueError(f"p must be 2 (the half squared Euclidean cost ½|x - y|²), got {options['p']!r}")
        op_checks.positive_scalar(options["blur"], "blur")
        _check_cost(options["cost"])
        return options

    def forward(self, *args):
        if len(args) == 2:
            x, y = args
            a = _uniform_weights(op_checks.tensor(x, "x"))
            b = _uniform_weights(op_checks.tensor(y, "y"))
        elif len(args) == 4:
            a, x, b, y = args
        else:
            raise ValueError(f"SinkhornLoss takes (x, y) or (a, x, b, y), got {len(args)} arguments")
        return sinkhorn_divergence(a, x, b, y, blur=self.blur, scaling=self.scaling, p=self.p, debias=self.debias,
                                   diameter=self.diameter, normalize=self.normalize, backend=self.backend,
                                   cache=self.cache, cost=self.cost, validate=self.validate, _uniform=len(args) == 2)

    def extra_repr(self) -> str:
        return (f"blur={self.blur}, scaling={self.scaling}, debias={self.debias}, diameter={self.diameter}, "
                f"normalize={self.normalize}, backend={self.backend!r}")


def _uniform_weights(x: torch.Tensor) -> torch.Tensor:
    if x.dim() not in (2, 3):
        raise ValueError(f"points must be (N, d) or (B, N, d), got shape {tuple(x.shape)}")
    n = x.shape[-2]
    if n == 0:
        raise ValueError(f"points must hold at least one point, got shape {tuple(x.shape)}")
    return torch.full(x.shape[:-1], 1.0 / n, dtype=x.dtype, device=x.device)

