"""Few-shot evaluation of a frozen embedding (SCGM / ANCOR protocol).

The protocol follows the evaluation code of

* SCGM: Ni et al., "Superclass-Conditional Gaussian Mixture Model for Learning
  Fine-Grained Embeddings", ICLR 2022, and
* ANCOR: Bukchin et al., "Fine-grained Angular Contrastive Learning with
  Coarse Labels", CVPR 2021.

Episode ``i`` is drawn with ``np.random.RandomState(i)``, so every method is
scored on the same episodes.  An episode picks ``n_way`` fine classes (all of
them when ``n_way == "all"`` or ``n_way`` >= the number available), then per
class ``n_shot`` support images and ``n_query`` query images from the rest of
that class, without replacement.  Each support image is represented by its
first ``n_aug`` augmented views; queries use the plain feature.  Features are
L2-normalised.  The classifier is multinomial logistic regression with
exactly scikit-learn's objective ``LogisticRegression(C=1, lbfgs)``:

    0.5 * ||W||^2 + C * sum_i CE(x_i W + b, y_i)      (b not penalised)

solved for a whole batch of episodes at once with Newton-CG in torch.  The
episode accuracy is the fraction of correct queries; we report the mean over
episodes and the 95% t-interval half-width.

Intra-class variant (``intra=True``): the episode first picks one coarse class
(among those with at least two usable fine classes), then
``min(max_ways, #its fine classes)`` of its fine classes; ``n_way`` is then
ignored.  ANCOR uses ``max_ways=5``; SCGM uses all of them (``max_ways=None``).

Note: for 2-way episodes modern scikit-learn (>= 1.8) fits a *binary* logistic
model, whose penalty differs by a factor 2 from the multinomial one solved
here; for n_way >= 3 the objectives are identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .units import fewshot_draws_hash

# Chunking of episodes: gathered inputs stay below _MEMORY_ELEMENTS floats
# (bounds memory for all-way episodes with large D), and the solver's
# (E, S, S) work arrays below _CACHE_ELEMENTS, which runs measurably faster on
# CPU than one huge batch.
_MEMORY_ELEMENTS = 2**25
_CACHE_ELEMENTS = 2**18

#: Stopping tolerance when only the predicted labels are wanted: the last Newton step changed no
#: support logit by more than this, so the logits are within about a tenth of it of the optimum's
#: (tests/test_fewshot.py compares with tightly converged fits; benchmarks/fewshot.py --shapes
#: paper measures the agreement at the papers' shapes).  Above _FLOAT64_TOL the solver runs in
#: float32.
PREDICT_TOL = 1e-2
_FLOAT64_TOL = 1e-4


# --------------------------------------------------------------------------
# Episode sampling
# --------------------------------------------------------------------------


@dataclass
class _ClassIndex:
    """Members of every usable fine class, built once per dataset."""

    classes: np.ndarray  # usable fine classes, sorted
    members: dict  # fine class -> indices of its images
    coarse_of: dict  # fine class -> its coarse class


def _check_sizes(n_way, n_shot: int, n_query: int, intra: bool, max_ways) -> None:
    if n_shot <= 0:
        raise ValueError(f"n_shot must be a positive integer, got {n_shot!r}")
    if n_query <= 0:
        raise ValueError(f"n_query must be a positive integer, got {n_query!r}")
    if intra:
        if max_ways is not None and max_ways < 2:
            raise ValueError(f"max_ways must be >= 2 or None, got {max_ways!r}")
    elif n_way != "all" and (isinstance(n_way, str) or n_way < 2):
        raise ValueError(f'n_way must be an integer >= 2 or "all", got {n_way!r}')


def _class_index(fine: np.ndarray, coarse: np.ndarray | None, min_count: int) -> _ClassIndex:
    """Index the fine classes that have at least ``min_count`` images."""
    fine = np.asarray(fine)
    order = np.argsort(fine, kind="stable")
    labels, starts, counts = np.unique(fine[order], return_index=True, return_counts=True)
    keep = counts >= min_count
    if keep.sum() < 2:
        raise ValueError(
            f"need at least 2 fine classes with >= {min_count} images "
            f"(n_shot + n_query), found {int(keep.sum())}"
        )
    members, coarse_of = {}, {}
    for c, s, n in zip(labels[keep], starts[keep], counts[keep]):
        members[c] = order[s : s + n]
        coarse_of[c] = None if coarse is None else np.asarray(coarse)[members[c][0]]
    return _ClassIndex(labels[keep], members, coarse_of)


def _episode_index(fine, coarse, n_way, n_shot, n_query, intra, max_ways) -> _ClassIndex:
    """The class index episodes are drawn from, after checking the episode sizes."""
    _check_sizes(n_way, n_shot, n_query, intra, max_ways)
    if intra and coarse is None:
        raise ValueError("intra episodes need coarse labels")
    return _class_index(fine, coarse, n_shot + n_query)


def _choose_classes(rng, index: _ClassIndex, n_way, intra: bool, max_ways) -> np.ndarray:
    if not intra:
        if n_way == "all" or n_way >= len(index.classes):
            return index.classes
        return np.sort(rng.choice(index.classes, n_way, replace=False))
    # Intra-class episodes: all ways share one coarse class.
    by_coarse: dict = {}
    for c in index.classes:
        by_coarse.setdefault(index.coarse_of[c], []).append(c)
    eligible = sorted(k for k, v in by_coarse.items() if len(v) >= 2)
    if not eligible:
        raise ValueError("intra episodes need a coarse class with >= 2 usable fine classes")
    fines = np.array(by_coarse[eligible[rng.randint(len(eligible))]])
    n = len(fines) if max_ways is None else min(max_ways, len(fines))
    return np.sort(rng.choice(fines, n, replace=False))


def _draw(episode: int, index: _ClassIndex, n_way, n_shot, n_query, intra, max_ways):
    rng = np.random.RandomState(episode)
    classes = _choose_classes(rng, index, n_way, intra, max_ways)
    picks = np.stack(
        [rng.choice(index.members[c], n_shot + n_query, replace=False) for c in classes]
    )
    return picks[:, :n_shot], picks[:, n_shot:], classes


def sample_episode(
    episode: int,
    fine: np.ndarray,
    coarse: np.ndarray | None = None,
    *,
    n_way: int | str = 5,
    n_shot: int = 1,
    n_query: int = 15,
    intra: bool = False,
    max_ways: int | None = 5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw episode ``episode`` (seeded with ``np.random.RandomState(episode)``).

    Only fine classes with at least ``n_shot + n_query`` images are used.
    With ``intra=True`` the ways are ``min(max_ways, k)`` fine classes of one
    random coarse class with ``k >= 2`` usable fine classes (``max_ways=None``
    means all ``k``, as in SCGM; ANCOR uses 5) and ``n_way`` is ignored.

    Returns ``(support_idx (W, n_shot), query_idx (W, n_query), classes (W,))``:
    indices into ``fine``; row ``j`` belongs to fine class ``classes[j]``.
    """
    index = _episode_index(fine, coarse, n_way, n_shot, n_query, intra, max_ways)
    return _draw(episode, index, n_way, n_shot, n_query, intra, max_ways)


# --------------------------------------------------------------------------
# Batched multinomial logistic regression (scikit-learn's objective)
# --------------------------------------------------------------------------


def _bdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-episode inner product of two (E, ...) tensors (as a batched matrix product: on CPU
    it avoids vecdot's temporary product; one episode, the all-way chunk, takes BLAS's dot, twice
    as fast on CPU)."""
    if a.shape[0] == 1:
        return torch.dot(a.reshape(-1), b.reshape(-1))[None]
    return (a.flatten(1)[:, None, :] @ b.flatten(1)[:, :, None])[:, 0, 0]


class _Point:
    """A point (or direction) ``(W, b)`` with its support logits.

    ``A (E, K, n)`` are the coefficients of ``W = A B`` on a basis ``B`` (see :class:`_Problem`:
    the centred supports, or the identity), ``Z (E, K, S)`` the support logits ``W Xc^T``
    without the intercepts ``b (E, K)``.  Keeping the logits beside the coefficients makes every
    objective value, inner product and line-search step free; only new directions cost a
    product.
    """

    def __init__(self, A, Z, b):
        self.A, self.Z, self.b = A, Z, b

    def logits(self):
        return self.Z + self.b[:, :, None]

    def axpy_(self, alpha, other):
        """In place: self += alpha * other, alpha (E,) per episode (in-place updates save the
        allocations, which on CPU cost more than the arithmetic of these memory-bound steps)."""
        a = alpha[:, None, None]
        self.A.addcmul_(a, other.A)
        self.Z.addcmul_(a, other.Z)
        self.b.addcmul_(alpha[:, None], other.b)
        return self

    def scale_add_(self, beta, other):
        """In place: self = other + beta * self (one pass per array: addcmul into self)."""
        for mine, theirs in ((self.A, other.A), (self.Z, other.Z)):
            torch.addcmul(theirs, mine, beta[:, None, None], out=mine)
        torch.addcmul(other.b, self.b, beta[:, None], out=self.b)
        return self

    def copy(self):
        return _Point(self.A.clone(), self.Z.clone(), self.b.clone())

    def zeros_like(self):
        return _Point(torch.zeros_like(self.A), torch.zeros_like(self.Z), torch.zeros_like(self.b))


def _class_sums(rows: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``Y rows`` for one-hot labels Y: the sum of each class's rows (E, K, n), by adding whole
    rows (no product with the one-hot matrix; 7x faster than scatter_add_ at 160-way)."""
    E, S, n = rows.shape
    index = (y + n_classes * torch.arange(E, device=y.device)[:, None]).flatten()
    out = rows.new_zeros(E * n_classes, n)
    return out.index_add_(0, index, rows.reshape(E * S, n)).view(E, n_classes, n)


class _Problem:
    """scikit-learn's objective ``0.5 ||W||^2 + C * sum CE(X W^T + b, y)`` for E episodes.

    Features are centred on the support mean m: ``X W^T + b = Xc W^T + (b + W m)`` is the same
    model with an unpenalised intercept, so the optimum's W is unchanged, while the common
    direction of real (non-negative) features no longer inflates the Hessian.  Layout is
    class-major (faster small batched matmuls on CPU): logits and probabilities ``(E, K, S)``.

    Two representations of W, chosen per chunk by :func:`_use_gram` (whichever costs fewer
    multiply-adds; both give the same iterates up to rounding):

    * Gram (``gram=True``): the optimum lies in the span of the supports (W = -C (P - Y)^T Xc),
      so ``W = A Xc`` with ``A (E, K, S)``; a new direction costs one ``K x S x S`` product
      with ``G = Xc Xc^T`` (its logits ``A G``), after an ``S x S x D`` product for G.
    * primal (``gram=False``): ``A = W (E, K, D)``; a new direction costs two ``K x S x D``
      products (``R Xc`` and its logits), with nothing to set up.
    """

    def __init__(self, Xc: torch.Tensor, y: torch.Tensor, n_classes: int, C: float, gram: bool):
        self.Xc, self.y, self.K, self.C, self.gram = Xc, y, n_classes, C, gram
        # The labels as an index (E, 1, S) into the class dimension: Y is never materialised.
        self.label_index = y[:, None, :]
        self.basis = Xc @ Xc.transpose(1, 2) if gram else Xc
        # A direction's logits are its coefficients times this: G, or Xc^T in the primal form.
        self.to_logits = self.basis if gram else Xc.transpose(1, 2)

    def wdot(self, u: _Point, v: _Point):
        """Per-episode ``<W_u, W_v>`` (free: in the Gram form ``<A_u, A_v G> = <A_u, Z_v>``)."""
        return _bdot(u.A, v.Z if self.gram else v.A)

    def dot(self, u: _Point, v: _Point):
        """Per-episode inner product of two points in the (W, b) metric."""
        return self.wdot(u, v) + _bdot(u.b, v.b)

    def coef(self, x: _Point):
        return x.A @ self.Xc if self.gram else x.A

    def add_direction(self, R, base: _Point, sign: float = 1.0) -> _Point:
        """The point with ``W = R Xc + sign W_base`` (``R (E, K, S)``), its logits and the
        intercepts ``R 1`` (b is not penalised, so the gradient and the Hessian product take
        nothing of base's b).  One product (two in the primal form)."""
        A = R if self.gram else R @ self.Xc
        return _Point(torch.add(A, base.A, alpha=sign), (A @ self.to_logits).add_(base.Z, alpha=sign),
                      R.sum(2))

    def label_sum(self, Z):
        """Per-episode sum of each support's entry for its own class, ``<Z, Y>``, by gather (reads
        S entries, not K x S)."""
        return Z.gather(1, self.label_index).flatten(1).sum(1)

    def labels_minus(self, P):
        """``C (Y - P)``: -P with 1 added at each support's class."""
        R = torch.neg(P).scatter_add_(1, self.label_index, P.new_ones(self.label_index.shape))
        return R if self.C == 1 else R.mul_(self.C)

    def cross_entropy(self, logits):
        """C * sum of the cross-entropies per episode and the softmax probabilities (E, K, S),
        computed in ``logits``' memory (callers pass a temporary)."""
        top = logits.amax(1, keepdim=True)
        own = self.label_sum(logits)
        e = logits.sub_(top).exp_()  # by hand: torch.softmax is slow for small K
        total = e.sum(1, keepdim=True)
        ce = (total.log() + top).flatten(1).sum(1) - own
        return self.C * ce, e.div_(total)

    def evaluate(self, x: _Point):
        """Objective per episode and softmax probabilities (E, K, S)."""
        ce, P = self.cross_entropy(x.logits())
        return 0.5 * self.wdot(x, x) + ce, P

    def neg_gradient(self, x: _Point, P) -> _Point:
        """Minus the gradient in the (W, b) metric: -(W + C (P - Y) Xc), C (Y - P) 1 (the sign
        the CG right-hand side needs).  One product."""
        return self.add_direction(self.labels_minus(P), x, sign=-1.0)

    def neg_gradient_at_zero(self) -> _Point:
        """Minus the gradient at W = 0, b = 0, where P = 1/K: ``R B = C (Y B - 1^T B / K)`` is a
        sum of rows per class, so no product (in the Gram form none at all)."""
        E, S = self.y.shape
        R = self.labels_minus(self.Xc.new_full((E, self.K, S), 1.0 / self.K))
        RB = self.C * (_class_sums(self.basis, self.y, self.K) - self.basis.sum(1, keepdim=True) / self.K)
        A, Z = (R, RB) if self.gram else (RB, RB @ self.to_logits)
        return _Point(A, Z, R.sum(2))

    def hessp(self, P, v: _Point) -> _Point:
        """Hessian-vector product: ``v + C J(v's logits)`` with the per-sample softmax
        Jacobian ``J = diag(p) - p p^T``.  One product."""
        Pu = v.logits().mul_(P)
        R = Pu.addcmul_(P, Pu.sum(1, keepdim=True), value=-1)  # P (u - P^T u)
        return self.add_direction(R if self.C == 1 else R.mul_(self.C), v)


def _cg(prob: _Problem, P, neg_g: _Point, rtol, max_iter: int):
    """CG for ``H d = -g`` from d = 0, per episode until ||residual|| <= rtol (one product with G
    per step); ``neg_g`` is used as the residual and overwritten.  Finished episodes keep
    alpha = beta = 0, so their d is frozen.

    Returns d and ``<-g, d>``, which CG gives for free: ``<r_0, p_i> = <r_i, r_i>`` (the
    directions are H-conjugate), so ``<r_0, d> = sum_i alpha_i <r_i, r_i>``."""
    zero = torch.zeros_like(rtol)
    r, p, d = neg_g, neg_g.copy(), neg_g.zeros_like()
    rr = prob.dot(r, r)
    decrease = torch.zeros_like(rr)
    active = rr > rtol * rtol
    for _ in range(max_iter if active.any() else 0):
        Hp = prob.hessp(P, p)
        alpha = torch.where(active, rr / prob.dot(p, Hp), zero)
        d.axpy_(alpha, p)
        decrease += alpha * rr
        r.axpy_(-alpha, Hp)
        rr_new = prob.dot(r, r)
        active = active & (rr_new > rtol * rtol)
        if not active.any():
            break
        p.scale_add_(torch.where(active, rr_new / rr, zero), r)
        rr = rr_new
    return d, decrease


#: 1-D Newton steps of the line search (the first Newton step, from W = 0, takes 2 more): one
#: is enough after a CG direction, whose unit step is already close.
_LINE_NEWTON = 1


def _line_search(prob: _Problem, x: _Point, d: _Point, dz, f, slope, step, iters: int):
    """Step along ``d`` (logits ``dz``) per episode: a few 1-D Newton steps on
    ``s -> f(x + s d)`` from ``step`` (E,), then backtracking until Armijo's condition holds.
    Costs no product: the logits are linear in s and the penalty quadratic.  Returns the step and
    the new objective and probabilities."""
    penalty, a0, a1 = 0.5 * prob.wdot(x, x), prob.wdot(x, d), prob.wdot(d, d)
    z = x.logits()

    def objective(s):
        ce, P = prob.cross_entropy(torch.addcmul(z, s[:, None, None], dz))
        return penalty + s * a0 + 0.5 * s * s * a1 + ce, P

    for _ in range(iters):  # the objective is convex, so the curvature is positive
        _, P = objective(step)
        Pdz = P * dz
        pz = Pdz.sum(1)  # per support, the mean of dz under P; its variance is the curvature
        grad = a0 + step * a1 + prob.C * (pz.flatten(1).sum(1) - prob.label_sum(dz))
        curv = a1 + prob.C * (_bdot(Pdz, dz) - _bdot(pz, pz))
        # In the (W, b) metric H >= I, so the minimum lies at s <= 1 along -g and near 1 along a
        # Newton direction; the cap stops rounding-level directions near the optimum from
        # taking huge steps.
        step = (step - grad / curv.clamp_min(torch.finfo(curv.dtype).tiny)).clamp(0, 2)
    # The slack absorbs rounding once the decrease is below the dtype's resolution.
    slack = 4 * torch.finfo(f.dtype).eps * f.abs()
    for _ in range(30):
        f_new, P = objective(step)
        ok = f_new <= f + 1e-4 * step * slope + slack
        if ok.all():
            return step, f_new, P
        step = torch.where(ok, step, 0.5 * step)
    step = torch.where(ok, step, 0.0)  # rounding floor: keep the old point there
    return (step, *objective(step))


def _newton(prob: _Problem, x: _Point, tol: float, max_iter: int):
    """Damped Newton-CG from ``x`` = 0 until, in every episode, the last step changed no support
    logit by more than ``tol`` (or could not decrease the objective).  Newton-CG converges here by
    about a factor 10 per step (measured at the paper shapes), so the logits are then within
    about tol / 10 of the optimum's; the rule needs no gradient at the final point, and a step of
    zero (rounding floor) also stops.

    Returns the solution and its softmax probabilities.
    """
    f, P = prob.evaluate(x)
    todo = torch.ones_like(f, dtype=torch.bool)
    for it in range(max_iter):
        neg_g = prob.neg_gradient_at_zero() if it == 0 else prob.neg_gradient(x, P)
        gg = prob.dot(neg_g, neg_g)
        if it == 0:
            # From W = 0 the first CG direction is -g itself: skip its Hessian product and let
            # the line search, started at 0, find the step.
            d, step, slope = neg_g, torch.zeros_like(gg), -gg
        else:
            # Forcing term min(0.5, sqrt|g|) |g| gives superlinear convergence.
            gnorm = gg.clamp_min(0).sqrt()
            rtol = torch.where(todo, gnorm * gnorm.sqrt().clamp(max=0.5), torch.inf)
            d, decrease = _cg(prob, P, neg_g, rtol, max_iter=50)
            step, slope = todo.to(f.dtype), -decrease
        dz = d.logits()
        step, f, P = _line_search(prob, x, d, dz, f, slope, step, _LINE_NEWTON + 2 * (it == 0))
        step = step * todo
        x.axpy_(step, d)
        # The change counts at least the unit step's, so a step that backtracking shortened does
        # not pass for convergence; a step of 0 (rounding floor) does.
        flat = dz.flatten(1)  # max |dz| without a temporary (aminmax is 10x slower on CPU)
        moved = torch.maximum(flat.amax(1), -flat.amin(1)) * torch.where(step > 0, step.clamp_min(1), 0)
        todo = todo & (moved > tol)
        if not todo.any():
            break
    return x, P


def _fit_chunk(support, labels, n_classes, C, tol, max_iter, device):
    """Solve one chunk of episodes; return coef (E, K, D) in the support's dtype and centred
    b (E, K).  Works in float32 at prediction tolerances, in float64 below _FLOAT64_TOL."""
    dtype = torch.float32 if tol >= _FLOAT64_TOL else torch.float64
    given = torch.as_tensor(support, device=device)
    X = given.to(dtype)
    y = torch.as_tensor(labels, dtype=torch.long, device=device)
    mean = X.mean(1, keepdim=True)
    Xc = X - mean
    E, S, D = X.shape
    prob = _Problem(Xc, y, n_classes, C, _use_gram(n_classes, S, D))
    x0 = _Point(X.new_zeros(E, n_classes, S if prob.gram else D), X.new_zeros(E, n_classes, S),
                X.new_zeros(E, n_classes))
    x, _ = _newton(prob, x0, tol, max_iter)
    coef = prob.coef(x)
    b = x.b - (coef @ mean.transpose(1, 2))[:, :, 0]  # the intercept of the uncentred features
    return coef.to(given.dtype), b - b.mean(1, keepdim=True)


#: Products (gradients and Hessian-vector products after the free first gradient) per episode at
#: PREDICT_TOL, counted at the all-way paper shapes (3 Newton steps, 2 CG steps each): the cost
#: model of _use_gram.
_PRODUCTS = 6


#: Cost of reading one float of a product's fixed operand (G or Xc), in multiply-adds: with few
#: classes K the products are memory-bound (K multiply-adds per element read).
_READ_COST = 24


def _use_gram(K: int, S: int, D: int) -> bool:
    """Whether the Gram form costs less than the primal one (see _Problem), in multiply-adds
    plus _READ_COST per element read: the Gram form pays ``S^2 D`` for G and ``K S D`` for the
    coefficients, then ``K S^2`` per product reading G (``S^2``), against ``2 K S D`` per product
    reading Xc twice (and one for the first gradient's logits) in the primal form.  So the Gram
    form wins unless there are many more supports than dimensions: at every paper shape (the
    read cost measured there: at 5-way 5-shot 2048-d the Gram form ran 3.6x faster, at 160-way
    640-d 1.0-1.2x), the primal one for, e.g., 5-shot all-way episodes on 64-d features."""
    gram = S * S * D + (K + _READ_COST) * S * D + _PRODUCTS * (K + _READ_COST) * S * S
    primal = (2 * _PRODUCTS + 1) * (K + _READ_COST) * S * D
    return gram <= primal


def _chunk_size(S: int, D: int, Q: int = 0) -> int:
    """Episodes per solver chunk (see _MEMORY_ELEMENTS and _CACHE_ELEMENTS)."""
    return max(1, min(_MEMORY_ELEMENTS // ((S + Q) * D), _CACHE_ELEMENTS // (S * S)))


def _slices(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def fit_logreg(
    support: np.ndarray,
    support_labels: np.ndarray,
    *,
    C: float = 1.0,
    n_classes: int | None = None,
    tol: float = 1e-6,
    max_iter: int = 100,
    chunk_size: int | None = None,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Fit E multinomial logistic regressions at once (scikit-learn objective).

    ``support (E, S, D)``, ``support_labels (E, S)`` in ``[0, n_classes)``.
    Returns ``coef (E, K, D)`` and ``intercept (E, K)`` laid out like
    scikit-learn's ``coef_``/``intercept_``; intercepts are centred (sum 0),
    which fixes their free common shift.  ``coef`` has the support's dtype.
    ``tol``: stop when the last Newton step changed no support logit by more than this (float64
    below 1e-4, float32 above).
    """
    support = np.asarray(support)
    K = n_classes or int(np.max(support_labels)) + 1
    E, S, D = support.shape
    coefs, intercepts = [], []
    for sl in _slices(E, chunk_size or _chunk_size(S, D)):
        coef, b = _fit_chunk(support[sl], support_labels[sl], K, C, tol, max_iter, device)
        coefs.append(coef.cpu().numpy())
        intercepts.append(b.cpu().numpy())
    return np.concatenate(coefs), np.concatenate(intercepts)


def logreg_objective(X, y, coef, intercept, C: float = 1.0) -> float:
    """scikit-learn's objective 0.5||W||^2 + C * sum CE for one episode."""
    import scipy.special  # scipy here and below, not at the top: the config check imports this module
    logits = X @ coef.T + intercept
    ce = scipy.special.logsumexp(logits, axis=1) - logits[np.arange(len(y)), y]
    return 0.5 * float(np.sum(coef**2)) + C * float(ce.sum())


def _query_logits(support, support_labels, query, C, n_classes, tol, max_iter, chunk_size, device):
    """Fit per solver chunk; yield the queries' logits ``(E_chunk, Q, K)`` in the query's dtype."""
    support, query = np.asarray(support), np.asarray(query)
    K = n_classes or int(np.max(support_labels)) + 1
    E, S, D = support.shape
    for sl in _slices(E, chunk_size or _chunk_size(S, D, query.shape[1])):
        coef, b = _fit_chunk(support[sl], support_labels[sl], K, C, tol, max_iter, device)
        Xq = torch.as_tensor(query[sl], device=device)
        # (E, Q, K) directly: argmax and softmax then run over a contiguous last dimension.
        # bmm, then the intercepts in place: faster on CPU than baddbmm's broadcast bias.
        yield (Xq @ coef.to(Xq.dtype).transpose(1, 2)).add_(b.to(Xq.dtype)[:, None, :])


def fit_predict_logreg(
    support: np.ndarray,
    support_labels: np.ndarray,
    query: np.ndarray,
    *,
    C: float = 1.0,
    n_classes: int | None = None,
    tol: float = PREDICT_TOL,
    max_iter: int = 100,
    chunk_size: int | None = None,
    device: str = "cpu",
) -> np.ndarray:
    """Batched logistic-regression classifier: predicted labels ``(E, Q)``.

    ``support (E, S, D)``, ``support_labels (E, S)`` in ``[0, n_classes)``,
    ``query (E, Q, D)``.  All episodes are solved together (in chunks that
    bound memory) by Newton-CG on scikit-learn's objective until the last Newton step changes no
    support logit by more than ``tol`` (see :func:`fit_logreg`), so predictions match
    ``LogisticRegression(C=C, solver="lbfgs", max_iter=1000)``.  Query logits
    are computed in the query's dtype. The default ``tol`` is :data:`PREDICT_TOL`.
    """
    args = (C, n_classes, tol, max_iter, chunk_size, device)
    return np.concatenate([
        logits.argmax(2).cpu().numpy()
        for logits in _query_logits(support, support_labels, query, *args)
    ])


def predict_proba_logreg(
    support: np.ndarray,
    support_labels: np.ndarray,
    query: np.ndarray,
    *,
    log: bool = False,
    C: float = 1.0,
    n_classes: int | None = None,
    tol: float = 1e-6,
    max_iter: int = 100,
    chunk_size: int | None = None,
    device: str = "cpu",
) -> np.ndarray:
    """Class probabilities ``(E, Q, K)`` of the queries, float64 (log-probabilities with
    ``log=True``): the batched counterpart of scikit-learn's ``predict_proba`` after the fit
    of :func:`fit_predict_logreg` (same arguments).  Their argmax is its prediction."""
    args = (C, n_classes, tol, max_iter, chunk_size, device)
    out = [
        torch.log_softmax(logits.to(torch.float64), 2).cpu().numpy()
        for logits in _query_logits(support, support_labels, query, *args)
    ]
    logp = np.concatenate(out)
    return logp if log else np.exp(logp)


def predict_cosine_nn(
    support: np.ndarray,
    support_labels: np.ndarray,
    query: np.ndarray,
    *,
    allowed: np.ndarray | None = None,
    chunk_size: int | None = None,
    device: str = "cpu",
) -> np.ndarray:
    """1-nearest-neighbour by cosine similarity to the support vectors: (E, Q).

    ``allowed (E, Q, S)``, optional boolean: query q of episode e may only pick supports with
    ``allowed[e, q]`` true (each row needs at least one; the cascade of two models uses it).
    """
    support, query = np.asarray(support), np.asarray(query)
    E, S, D = support.shape
    out = []
    for sl in _slices(E, chunk_size or _chunk_size(S, D, query.shape[1])):
        Xs = torch.nn.functional.normalize(torch.as_tensor(support[sl], device=device), dim=2)
        Xq = torch.nn.functional.normalize(torch.as_tensor(query[sl], device=device), dim=2)
        sims = Xq @ Xs.transpose(1, 2)
        if allowed is not None:
            mask = torch.as_tensor(np.asarray(allowed[sl], dtype=bool), device=device)
            sims = sims.masked_fill(~mask, -torch.inf)
        nearest = sims.argmax(2).cpu().numpy()
        out.append(np.take_along_axis(np.asarray(support_labels[sl]), nearest, axis=1))
    return np.concatenate(out)


# --------------------------------------------------------------------------
# Protocol
# --------------------------------------------------------------------------


def mean_ci95(values) -> tuple[float, float]:
    """Mean and 95% t-interval half-width t(0.975, n-1) * std(ddof=1) / sqrt(n)."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return float(v.mean()), float("nan")
    import scipy.stats

    h = scipy.stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean()), float(h)


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def episode_arrays(features, aug_features, draws, n_aug: int):
    """Classifier inputs for episodes with the same number of ways.

    ``draws`` are ``sample_episode`` results.  Returns L2-normalised
    ``support (E, W*n_shot*n_aug, D)`` (the first ``n_aug`` views of each
    support image), ``support_labels``, ``query (E, W*n_query, D)`` (plain
    features) and ``query_labels``; labels are way indices in ``[0, W)``.
    """
    sup = np.stack([s for s, _, _ in draws])  # (E, W, n_shot)
    qry = np.stack([q for _, q, _ in draws])  # (E, W, n_query)
    E, W, n_shot = sup.shape
    Xs = aug_features[sup.reshape(-1)][:, :n_aug].reshape(E, W * n_shot * n_aug, -1)
    ys = np.repeat(np.arange(W), n_shot * n_aug)[None].repeat(E, 0)
    Xq = features[qry.reshape(-1)].reshape(E, W * qry.shape[2], -1)
    yq = np.repeat(np.arange(W), qry.shape[2])[None].repeat(E, 0)
    return _l2n(Xs), ys, _l2n(Xq), yq


def draw_episodes(
    fine: np.ndarray,
    coarse: np.ndarray | None = None,
    *,
    n_way: int | str = 5,
    n_shot: int = 1,
    n_query: int = 15,
    episodes: int = 1000,
    intra: bool = False,
    max_ways: int | None = 5,
) -> list:
    """Episodes ``0 .. episodes-1`` as :func:`sample_episode` draws them (index built once)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    index = _episode_index(fine, coarse, n_way, n_shot, n_query, intra, max_ways)
    return [_draw(i, index, n_way, n_shot, n_query, intra, max_ways) for i in range(episodes)]


def episode_batches(draws, elements_per_way: int):
    """Group episodes by their number of ways (intra episodes may differ) and cut each group
    into batches whose gathered arrays stay below _MEMORY_ELEMENTS floats.

    ``elements_per_way`` is the number of floats one way of one episode gathers (e.g.
    ``(n_shot * n_aug + n_query) * D``).  Yields ``(ways, episode ids)``.
    """
    ways = np.array([len(c) for _, _, c in draws])
    for w in np.unique(ways):
        ids = np.flatnonzero(ways == w)
        for sl in _slices(len(ids), max(1, _MEMORY_ELEMENTS // (int(w) * elements_per_way))):
            yield int(w), ids[sl]


def fewshot_accuracy(
    features: np.ndarray,
    aug_features: np.ndarray,
    fine: np.ndarray,
    coarse: np.ndarray | None = None,
    *,
    n_way: int | str = 5,
    n_shot: int = 1,
    n_query: int = 15,
    n_aug: int = 5,
    episodes: int = 1000,
    intra: bool = False,
    max_ways: int | None = 5,
    classifier: str = "logreg",
    device: str = "cpu",
) -> dict:
    """Few-shot accuracy of an embedding under the SCGM / ANCOR protocol.

    ``features (N, D)`` are the plain features (used for queries),
    ``aug_features (N, K, D)`` the augmented views (the first ``n_aug`` of
    each support image are the training vectors, so a class has
    ``n_shot * n_aug`` support vectors).  ``classifier`` is
    ``"logreg"`` (scikit-learn-equivalent multinomial logistic regression,
    C=1) or ``"cosine_nn"``.  See the module docstring for the episodes.

    Returns ``{"accuracy", "ci95", "n", "per_episode", "draws_hash"}`` (fractions in [0, 1];
    ``draws_hash``: :func:`fgbench.evaluate.units.fewshot_draws_hash` of the episodes).
    """
    _check_sizes(n_way, n_shot, n_query, intra, max_ways)
    if not 1 <= n_aug <= aug_features.shape[1]:
        raise ValueError(f"n_aug must be in [1, {aug_features.shape[1]}], got {n_aug}")
    if classifier not in ("logreg", "cosine_nn"):
        raise ValueError(f'classifier must be "logreg" or "cosine_nn", got {classifier!r}')
    draws = draw_episodes(fine, coarse, n_way=n_way, n_shot=n_shot, n_query=n_query,
                          episodes=episodes, intra=intra, max_ways=max_ways)
    acc = np.empty(episodes)
    # Features are gathered per batch so all-way episodes with large D fit memory.
    per_way = (n_shot * n_aug + n_query) * features.shape[1]
    for w, ids in episode_batches(draws, per_way):
        Xs, ys, Xq, yq = episode_arrays(features, aug_features, [draws[i] for i in ids], n_aug)
        if classifier == "logreg":
            pred = fit_predict_logreg(Xs, ys, Xq, n_classes=w, device=device)
        else:
            pred = predict_cosine_nn(Xs, ys, Xq, device=device)
        acc[ids] = (pred == yq).mean(1)
    mean, h = mean_ci95(acc)
    sampling = {"n_way": n_way, "n_shot": n_shot, "n_query": n_query, "n_aug": n_aug, "intra": intra,
                "max_ways": max_ways}
    return {"accuracy": mean, "ci95": h, "n": episodes, "per_episode": acc,
            "draws_hash": fewshot_draws_hash(draws, sampling)}
