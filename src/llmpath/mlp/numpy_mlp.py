"""A multi-layer perceptron in NumPy only: every forward and backward pass written by hand.

The lesson of stage 1 is backpropagation, so nothing here uses autograd:

- `Linear`, `ReLU`, `Tanh`, `Sigmoid`, `GELU`: each has `forward(x)` (caching what backward needs)
  and `backward(dout) -> dx` (filling `grads` for its parameters).
- `softmax_cross_entropy(logits, y) -> (loss, dlogits)`: the loss and its gradient in one go.
- `MLP`: the layers in a list; `loss_and_grads(x, y)` is forward, loss, backward.
- `SGD`, `Momentum`, `Adam`: the update rules, written out.
- `grad_check(...)`: central finite differences, to prove the backward passes right.
- `train_numpy(...)`: its own training loop. It does not use `llmpath.train.fit` because that loop
  is built on torch optimizers and autograd; here the loop *is* the lesson (shuffle, forward,
  backward, update, evaluate on val, keep the best weights), so it stays short and visible.

Inputs may be dense arrays or SciPy sparse matrices (TF-IDF rows are >99% zeros): the first
`Linear` computes `x @ W` and `x.T @ dout` with sparse products, so a 20k-word vocabulary costs
only the non-zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

try:  # scikit-learn depends on SciPy, so it is normally there
    import scipy.sparse as sp
except ImportError:  # pragma: no cover
    sp = None


def _is_sparse(x) -> bool:
    return sp is not None and sp.issparse(x)


# ----------------------------------------------------------------------------- layers

class Layer:
    """A differentiable step. Parameters and their gradients live in dicts with the same keys."""

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.training = True

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dout: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Linear(Layer):
    """y = x W + b, with W of shape (in, out).

    backward: dW = x^T dout, db = sum over the batch of dout, dx = dout W^T.
    """

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator, dtype=np.float32, need_dx: bool = True):
        super().__init__()
        bound = 1.0 / math.sqrt(n_in)  # the same uniform init as torch.nn.Linear
        self.params["W"] = rng.uniform(-bound, bound, (n_in, n_out)).astype(dtype)
        self.params["b"] = rng.uniform(-bound, bound, n_out).astype(dtype)
        self.need_dx = need_dx  # the first layer's input is data: no gradient needed

    def forward(self, x):
        self.x = x
        out = x @ self.params["W"]
        return np.asarray(out) + self.params["b"]

    def backward(self, dout):
        x = self.x
        self.grads["W"] = np.asarray(x.T @ dout, dtype=self.params["W"].dtype)
        self.grads["b"] = dout.sum(axis=0)
        return dout @ self.params["W"].T if self.need_dx else None


class ReLU(Layer):
    """relu(x) = max(x, 0); derivative 1 where x > 0, else 0."""

    def forward(self, x):
        self.mask = x > 0
        return x * self.mask

    def backward(self, dout):
        return dout * self.mask


class Tanh(Layer):
    """tanh(x); derivative 1 - tanh(x)^2."""

    def forward(self, x):
        self.y = np.tanh(x)
        return self.y

    def backward(self, dout):
        return dout * (1 - self.y ** 2)


class Sigmoid(Layer):
    """sigma(x) = 1 / (1 + e^-x); derivative sigma(x) (1 - sigma(x))."""

    def forward(self, x):
        self.y = sigmoid(x)
        return self.y

    def backward(self, dout):
        return dout * self.y * (1 - self.y)


_GELU_C = math.sqrt(2 / math.pi)


class GELU(Layer):
    """GELU, tanh form (torch: approximate='tanh'): 0.5 x (1 + tanh(c (x + 0.044715 x^3))).

    derivative: 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 * 0.044715 x^2), with t the tanh above.
    """

    def forward(self, x):
        self.x = x
        self.t = np.tanh(_GELU_C * (x + 0.044715 * x ** 3))
        return 0.5 * x * (1 + self.t)

    def backward(self, dout):
        x, t = self.x, self.t
        return dout * (0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * _GELU_C * (1 + 3 * 0.044715 * x ** 2))


class Dropout(Layer):
    """Zero each unit with probability p while training and scale the rest by 1/(1-p)."""

    def __init__(self, p: float, rng: np.random.Generator):
        super().__init__()
        self.p, self.rng = p, rng

    def forward(self, x):
        if not self.training or self.p == 0:
            self.mask = None
            return x
        self.mask = (self.rng.random(x.shape) >= self.p).astype(x.dtype) / (1 - self.p)
        return x * self.mask

    def backward(self, dout):
        return dout if self.mask is None else dout * self.mask


ACTIVATIONS: dict[str, type[Layer]] = {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid, "gelu": GELU}


def sigmoid(x):
    # split by sign so that exp never overflows
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1 / (1 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1 + e)
    return out


# ------------------------------------------------------------------------------- loss

def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)  # shift: same softmax, no overflow
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax_cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of integer labels y under softmax(logits), and d loss / d logits.

    With p = softmax(z): loss = -mean_i log p[i, y_i];  dloss/dz = (p - onehot(y)) / N.
    """
    n = logits.shape[0]
    logp = log_softmax(logits)
    loss = -logp[np.arange(n), y].mean()
    d = np.exp(logp)
    d[np.arange(n), y] -= 1
    return float(loss), d / n


# -------------------------------------------------------------------------------- MLP

class MLP:
    """Linear -> act -> [dropout] -> ... -> Linear. sizes = (n_in, hidden..., n_classes)."""

    def __init__(self, sizes: tuple[int, ...], activation: str = "relu", seed: int = 0, dtype=np.float32,
                 dropout: float = 0.0):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}'; choose one of: {', '.join(ACTIVATIONS)}")
        rng = np.random.default_rng(seed)
        self.sizes, self.activation = tuple(sizes), activation
        self.layers: list[Layer] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            self.layers.append(Linear(a, b, rng, dtype, need_dx=i > 0))
            if i < len(sizes) - 2:
                self.layers.append(ACTIVATIONS[activation]())
                if dropout > 0:
                    self.layers.append(Dropout(dropout, rng))

    def linears(self) -> list[Linear]:
        return [l for l in self.layers if isinstance(l, Linear)]

    def train(self, mode: bool = True) -> "MLP":
        for l in self.layers:
            l.training = mode
        return self

    def forward(self, x) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    __call__ = forward

    def backward(self, dout: np.ndarray) -> None:
        for layer in reversed(self.layers):
            dout = layer.backward(dout)

    def loss_and_grads(self, x, y) -> float:
        loss, d = softmax_cross_entropy(self.forward(x), y)
        self.backward(d)
        return loss

    def parameters(self) -> list[tuple[dict, str]]:
        """(dict, key) pairs: the dict holds the array, so optimizers can update it in place."""
        return [(l, k) for l in self.layers for k in l.params]

    def state(self) -> list[np.ndarray]:
        return [l.params[k].copy() for l, k in self.parameters()]

    def load_state(self, arrays: list[np.ndarray]) -> None:
        for (l, k), a in zip(self.parameters(), arrays):
            l.params[k][...] = a

    def predict(self, x, batch_size: int = 4096) -> np.ndarray:
        return self.predict_logits(x, batch_size).argmax(axis=1)

    def predict_logits(self, x, batch_size: int = 4096) -> np.ndarray:
        self.train(False)
        out = np.concatenate([self.forward(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
        self.train(True)
        return out


# ------------------------------------------------------------------------- optimizers

class Optimizer:
    """Updates the arrays of `model.parameters()` in place from the layers' `grads`."""

    def __init__(self, model: MLP, lr: float, weight_decay: float = 0.0):
        self.model, self.lr, self.weight_decay = model, lr, weight_decay
        self.t = 0

    def grad(self, layer: Layer, key: str) -> np.ndarray:
        g = layer.grads[key]
        if self.weight_decay and key == "W":  # L2 penalty (wd/2)|W|^2 on weights, not biases
            g = g + self.weight_decay * layer.params[key]
        return g

    def step(self) -> None:
        self.t += 1
        for layer, key in self.model.parameters():
            self.update(layer, key, self.grad(layer, key))

    def update(self, layer: Layer, key: str, g: np.ndarray) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """w <- w - lr * g"""

    def update(self, layer, key, g):
        layer.params[key] -= self.lr * g


class Momentum(Optimizer):
    """v <- beta v + g;  w <- w - lr v   (heavy ball, as torch.optim.SGD(momentum=beta))."""

    def __init__(self, model, lr, beta: float = 0.9, weight_decay: float = 0.0):
        super().__init__(model, lr, weight_decay)
        self.beta = beta
        self.v = {(id(l), k): np.zeros_like(l.params[k]) for l, k in model.parameters()}

    def update(self, layer, key, g):
        v = self.v[(id(layer), key)]
        v *= self.beta
        v += g
        layer.params[key] -= self.lr * v


class Adam(Optimizer):
    """m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  w <- w - lr m_hat / (sqrt(v_hat) + eps),
    with the bias corrections m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)."""

    def __init__(self, model, lr, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(model, lr, weight_decay)
        self.b1, self.b2 = betas
        self.eps = eps
        self.m = {(id(l), k): np.zeros_like(l.params[k]) for l, k in model.parameters()}
        self.v = {(id(l), k): np.zeros_like(l.params[k]) for l, k in model.parameters()}

    def update(self, layer, key, g):
        m, v = self.m[(id(layer), key)], self.v[(id(layer), key)]
        m *= self.b1
        m += (1 - self.b1) * g
        v *= self.b2
        v += (1 - self.b2) * g * g
        mhat = m / (1 - self.b1 ** self.t)
        vhat = v / (1 - self.b2 ** self.t)
        layer.params[key] -= self.lr * mhat / (np.sqrt(vhat) + self.eps)


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "adam": Adam}


def make_optimizer(name: str, model: MLP, lr: float, weight_decay: float = 0.0) -> Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{name}'; choose one of: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](model, lr, weight_decay=weight_decay)


# --------------------------------------------------------------------- gradient check

def numeric_grad(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences (f(x+h) - f(x-h)) / 2h, one entry of x at a time (x changed in place)."""
    g = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / (||a|| + ||b||): scale-free, 0 when equal, ~1 when unrelated.

    (A per-entry max of |a-b| / (|a|+|b|) would flag entries of size 1e-9 where the finite
    difference itself has absolute noise of ~1e-10; the norm ratio weighs entries by size.)"""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300))


def grad_check_layer(layer: Layer, x: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Relative errors of a layer's analytic gradients (input and parameters) against central
    differences of the scalar f = sum(forward(x) * r), r a fixed random array (float64)."""
    r = np.random.default_rng(seed).standard_normal(layer.forward(x).shape)
    f = lambda: float((layer.forward(x) * r).sum())
    layer.forward(x)
    dx = layer.backward(r)
    errs = {}
    if dx is not None:
        errs["x"] = rel_error(dx, numeric_grad(f, x))
    for k in layer.params:
        errs[k] = rel_error(layer.grads[k], numeric_grad(f, layer.params[k]))
    return errs


def grad_check_loss(logits: np.ndarray, y: np.ndarray) -> float:
    _, d = softmax_cross_entropy(logits, y)
    return rel_error(d, numeric_grad(lambda: softmax_cross_entropy(logits, y)[0], logits))


def grad_check_model(model: MLP, x: np.ndarray, y: np.ndarray,
                     backward: Callable[[MLP, np.ndarray, np.ndarray], float] | None = None) -> dict[str, float]:
    """Relative error of every parameter's gradient from `backward` (default: model.loss_and_grads)
    against central differences of the loss. Pass a deliberately broken `backward` to see it caught."""
    (backward or MLP.loss_and_grads)(model, x, y)
    analytic = {f"{i}.{k}": layer.grads[k].copy() for i, layer in enumerate(model.layers) for k in layer.params}
    f = lambda: softmax_cross_entropy(model.forward(x), y)[0]
    return {f"{i}.{k}": rel_error(analytic[f"{i}.{k}"], numeric_grad(f, layer.params[k]))
            for i, layer in enumerate(model.layers) for k in layer.params}


# ------------------------------------------------------------------------ training loop

@dataclass
class History:
    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = -1


def accuracy(model: MLP, x, y) -> float:
    return float((model.predict(x) == y).mean())


def train_numpy(model: MLP, x, y, optimizer: Optimizer, epochs: int = 5, batch_size: int = 64, seed: int = 0,
                x_val=None, y_val=None, log_every: int = 0, keep_best: bool = True,
                on_step: Callable[[int, float], None] | None = None) -> History:
    """Mini-batch training: shuffle each epoch, forward + backward + optimizer.step() per batch.

    With a val split, evaluates after every epoch and (keep_best) restores the weights of the epoch
    with the best val accuracy at the end: early stopping chosen on val, never on test.
    """
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    hist = History()
    best_state = None
    step = 0
    for epoch in range(epochs):
        perm = rng.permutation(n)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            idx = perm[i:i + batch_size]
            loss = model.loss_and_grads(x[idx], y[idx])
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {step}: lower the learning rate")
            optimizer.step()
            step += 1
            if on_step is not None:
                on_step(step, loss)
            if log_every and step % log_every == 0:
                hist.step.append(step)
                hist.train_loss.append(loss)
        if x_val is not None:
            logits = model.predict_logits(x_val)
            vl, _ = softmax_cross_entropy(logits, y_val)
            acc = float((logits.argmax(1) == y_val).mean())
            hist.val_step.append(step)
            hist.val_loss.append(vl)
            hist.val_acc.append(acc)
            if acc > hist.best_acc:
                hist.best_acc, hist.best_epoch = acc, epoch
                if keep_best:
                    best_state = model.state()
    if best_state is not None:
        model.load_state(best_state)
    return hist
