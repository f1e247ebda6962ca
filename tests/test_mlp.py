"""Stage 1: hand-written backprop is right (finite differences, autograd), NumPy == torch,
the CLI trains end to end, and the MLP matches or beats LogisticRegression."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llmpath.cli import main
from llmpath.config import ConfigError, build_config
from llmpath.mlp import cli as mlp_cli
from llmpath.mlp.model import TorchMLP
from llmpath.mlp.numpy_mlp import (ACTIVATIONS, GELU, MLP, Adam, Linear, Momentum, SGD, grad_check_layer,
                                   grad_check_loss, grad_check_model, softmax_cross_entropy)

TOL = 1e-6


def rng(seed=0):
    return np.random.default_rng(seed)


def test_config_presets_and_errors():
    cfg = build_config(mlp_cli.MLPRun, ["--preset=tiny", "--hidden=8", "--train.lr=3e-3"], mlp_cli.PRESETS)
    assert cfg.hidden == 8 and cfg.train.lr == 3e-3 and cfg.max_train == 1500
    assert build_config(mlp_cli.MLPRun, [], mlp_cli.PRESETS).preset == "small"
    with pytest.raises(ConfigError, match="unknown option '--hiden'"):
        build_config(mlp_cli.MLPRun, ["--hiden=3"], mlp_cli.PRESETS)
    with pytest.raises(ConfigError, match="choose one of: relu, tanh, sigmoid, gelu"):
        build_config(mlp_cli.MLPRun, ["--activation=swish"], mlp_cli.PRESETS)


def test_linear_gradients_match_finite_differences():
    layer = Linear(5, 4, rng(), dtype=np.float64)
    errs = grad_check_layer(layer, rng(1).standard_normal((3, 5)))
    assert set(errs) == {"x", "W", "b"} and max(errs.values()) < TOL, errs


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_gradients_match_finite_differences(name):
    x = rng(2).standard_normal((4, 6))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from ReLU's kink
    errs = grad_check_layer(ACTIVATIONS[name](), x)
    assert errs["x"] < TOL, errs


def test_loss_gradient_matches_finite_differences():
    logits = rng(3).standard_normal((5, 4)) * 3
    assert grad_check_loss(logits, np.array([0, 3, 1, 1, 2])) < TOL


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_whole_model_gradients_match_finite_differences(activation):
    m = MLP((6, 5, 4, 3), activation, seed=1, dtype=np.float64)
    x, y = rng(4).standard_normal((7, 6)), np.array([0, 1, 2, 2, 1, 0, 1])
    errs = grad_check_model(m, x, y)
    assert len(errs) == 6 and max(errs.values()) < TOL, errs


def test_checker_catches_a_wrong_gradient():
    """A backward pass with a classic bug (forgetting the 1/N of the mean) must fail the check."""
    m = MLP((6, 5, 3), "tanh", seed=1, dtype=np.float64)
    x, y = rng(5).standard_normal((4, 6)), np.array([0, 1, 2, 1])

    def buggy(model, x, y):
        loss, d = softmax_cross_entropy(model.forward(x), y)
        model.backward(d * len(y))
        return loss

    assert max(grad_check_model(m, x, y, backward=buggy).values()) > 0.1
    # and a wrong activation derivative (missing the GELU x*(1-t^2) term) is caught too
    class BadGELU(GELU):
        def backward(self, dout):
            return dout * 0.5 * (1 + self.t)

    assert grad_check_layer(BadGELU(), rng(6).standard_normal((3, 4)))["x"] > 1e-3


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_gradients_match_torch_autograd(activation):
    m = MLP((8, 6, 3), activation, seed=2, dtype=np.float64)
    x, y = rng(7).standard_normal((5, 8)), np.array([0, 1, 2, 2, 0])
    loss = m.loss_and_grads(x, y)
    t = TorchMLP((8, 6, 3), activation).double().from_numpy(m)
    tl = torch.nn.functional.cross_entropy(t(torch.from_numpy(x)), torch.from_numpy(y))
    tl.backward()
    assert np.isclose(loss, tl.item(), rtol=1e-10)
    for ln, lt in zip(m.linears(), t.linears()):
        np.testing.assert_allclose(ln.grads["W"], lt.weight.grad.numpy().T, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(ln.grads["b"], lt.bias.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_numpy_and_torch_forward_agree_float32(activation):
    m = MLP((20, 16, 3), activation, seed=3)
    x = rng(8).standard_normal((10, 20)).astype(np.float32)
    t = TorchMLP((20, 16, 3), activation).from_numpy(m)
    with torch.no_grad():
        np.testing.assert_allclose(m(x), t(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)


def test_sparse_input_equals_dense():
    sp = pytest.importorskip("scipy.sparse")
    x = rng(9).standard_normal((6, 30)) * (rng(10).random((6, 30)) < 0.1)
    y = np.array([0, 1, 2, 0, 1, 2])
    a, b = MLP((30, 4, 3), seed=0, dtype=np.float64), MLP((30, 4, 3), seed=0, dtype=np.float64)
    assert a.loss_and_grads(x, y) == pytest.approx(b.loss_and_grads(sp.csr_matrix(x), y))
    np.testing.assert_allclose(a.layers[0].grads["W"], b.layers[0].grads["W"])


@pytest.mark.parametrize("ours, theirs", [
    (lambda m: SGD(m, 0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    (lambda m: Momentum(m, 0.1, beta=0.9), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    (lambda m: Adam(m, 0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
])
def test_optimizers_match_torch(ours, theirs):
    """Five steps of our update rules == torch.optim's on the same model and batch."""
    m, t = five_steps_both(ours, theirs)
    for ln, lt in zip(m.linears(), t.linears()):
        np.testing.assert_allclose(ln.params["W"], lt.weight.detach().numpy().T, rtol=1e-7, atol=1e-9)


def five_steps_both(ours, theirs):
    """(our MLP, the torch MLP with the same weights) after five steps of `ours` / `theirs` on one batch."""
    m = MLP((5, 4, 3), "tanh", seed=4, dtype=np.float64)
    t = TorchMLP((5, 4, 3), "tanh").double().from_numpy(m)
    x, y = rng(11).standard_normal((6, 5)), np.array([0, 1, 2, 0, 1, 2])
    o, ot = ours(m), theirs(t.parameters())
    for _ in range(5):
        m.loss_and_grads(x, y)
        o.step()
        ot.zero_grad()
        torch.nn.functional.cross_entropy(t(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        ot.step()
    return m, t


def test_hidden_layer_solves_xor_and_linear_does_not():
    from llmpath.mlp.experiments import fit_small, xor

    x, y = xor()
    assert (fit_small(x, y, (), 60).predict(x) == y).mean() < 0.75
    assert (fit_small(x, y, (16,), 60).predict(x) == y).mean() > 0.95


def test_smoke():
    assert "ok" in mlp_cli.smoke()


def test_tiny_preset_trains_end_to_end_through_the_cli(tmp_path, capsys):
    assert main(["mlp", "train", "--preset=tiny", f"--out={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "| tweets | numpy_mlp |" in out and "| chinese-reviews | torch_mlp |" in out
    run = tmp_path / "mlp" / "tiny"
    for f in ("results.json", "config.json", "tweets/metrics.jsonl", "tweets/ckpt/best.pt", "tweets/numpy_mlp.npz",
              "figures/decision_boundary.png", "figures/activations.png", "figures/optimizers.png",
              "figures/confusion_tweets.png", "figures/curves_chinese-reviews.png"):
        assert (run / f).exists(), f
    assert main(["mlp", "eval", "--preset=tiny", f"--out={tmp_path}"]) == 0
    assert "| chinese-reviews | numpy_mlp |" in capsys.readouterr().out
    stamp = (run / "results.json").stat().st_mtime_ns
    res = mlp_cli.tour("tiny", str(tmp_path))  # reuses the finished run: same comparable config
    assert res.table.count("\n") == 7 and len(res.figures) == 7 and (run / "results.json").stat().st_mtime_ns == stamp
    assert main(["mlp", "train", "--preset=tiny", f"--out={tmp_path}", "--train.epochs=1"]) == 2  # not unasked
    assert (run / "results.json").stat().st_mtime_ns == stamp
    assert main(["mlp", "train", "--preset=tiny", f"--out={tmp_path}", "--train.epochs=1", "--fresh"]) == 0
    assert json.loads((run / "results.json").read_text())["config"]["train"]["epochs"] == 1
    with pytest.raises(ConfigError, match="already holds a finished run .*--fresh to replace it"):
        mlp_cli.tour("tiny", str(tmp_path))  # the folder now holds other options: the tour does not overwrite them


@pytest.mark.slow
def test_mlp_matches_or_beats_logistic_regression_small_preset(tmp_path):
    """The bar, with exactly the tour's small preset (figures off: they do not change the models)."""
    cfg = build_config(mlp_cli.MLPRun, ["--preset=small", f"--out={tmp_path}", "--figures=false"], mlp_cli.PRESETS)
    res = mlp_cli.train(cfg)
    for ds in ("tweets", "chinese-reviews"):
        r = res["datasets"][ds]
        base = r["baseline"]["test"]["accuracy"]
        for m in ("numpy_mlp", "torch_mlp"):
            assert r[m]["test"]["accuracy"] >= base - 0.01, (ds, m, r[m]["test"], base)
    assert res["bar"]["passed"]


def test_train_restores_the_torch_thread_count(tmp_path):
    before = torch.get_num_threads()
    cfg = build_config(mlp_cli.MLPRun, ["--preset=tiny", f"--out={tmp_path}", "--data=chinese-reviews",
                                        "--figures=false", "--threads=1"], mlp_cli.PRESETS)
    mlp_cli.train(cfg)
    assert torch.get_num_threads() == before


# ------------------------------------------------------------------ chapter 1: the worked example, the exercises

CHAPTER_1 = Path(__file__).resolve().parent.parent / "docs" / "tutorials" / "01_mlp.md"

# The numbers docs/tutorials/01_mlp.md, section 3, prints (4 decimals), recomputed below three ways.
WORKED = {"z1": [1.0, -0.1], "h": [1.0, 0.0], "z2": [0.6, -0.3], "p": [0.7109, 0.2891], "loss": 1.2412,
          "dz2": [0.7109, -0.7109], "dW2": [[0.7109, -0.7109], [0.0, 0.0]], "db2": [0.7109, -0.7109],
          "dh": [0.7109, -0.3555], "dz1": [0.7109, 0.0], "dW1": [[0.7109, 0.0], [1.4219, 0.0]],
          "db1": [0.7109, 0.0], "dx": [0.3555, 0.1422]}


def example_mlp() -> MLP:
    from llmpath.mlp.diagrams import EXAMPLE

    m = MLP((2, 2, 2), "relu", dtype=np.float64)
    for lin, w, b in zip(m.linears(), ("W1", "W2"), ("b1", "b2")):
        lin.params["W"][...], lin.params["b"][...] = EXAMPLE[w], EXAMPLE[b]
    return m


def example_xy():
    from llmpath.mlp.diagrams import EXAMPLE

    return np.array(EXAMPLE["x"]), np.array(EXAMPLE["y"])


def close(a, b):
    np.testing.assert_allclose(np.ravel(np.asarray(a, dtype=float)), np.ravel(b), atol=5e-5)


def test_worked_example_of_chapter_1_is_what_the_library_and_autograd_compute():
    from llmpath.mlp.diagrams import EXAMPLE, worked_example

    # 1. the NumPy MLP's own loss_and_grads
    m, (x, y) = example_mlp(), example_xy()
    close(m.loss_and_grads(x, y), WORKED["loss"])
    for k, lin in zip((1, 2), m.linears()):
        close(lin.grads["W"], WORKED[f"dW{k}"])
        close(lin.grads["b"], WORKED[f"db{k}"])
    # 2. torch autograd, every intermediate kept
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k not in ("x", "y")) for k, v in EXAMPLE.items()
         if k != "y"}
    t["x"].requires_grad_(True)
    z1 = t["x"] @ t["W1"] + t["b1"]
    h = torch.relu(z1)
    z2 = h @ t["W2"] + t["b2"]
    for v in (z1, h, z2):
        v.retain_grad()
    loss = torch.nn.functional.cross_entropy(z2, torch.tensor(EXAMPLE["y"]))
    loss.backward()
    torch_vals = {"z1": z1, "h": h, "z2": z2, "p": torch.softmax(z2, 1), "loss": loss, "dz2": z2.grad, "dh": h.grad,
                  "dz1": z1.grad, "dx": t["x"].grad, "dW1": t["W1"].grad, "db1": t["b1"].grad, "dW2": t["W2"].grad,
                  "db2": t["b2"].grad}
    # 3. the function the diagram draws from
    ours = worked_example()
    text = CHAPTER_1.read_text(encoding="utf-8")
    for k, v in WORKED.items():
        close(torch_vals[k].detach().numpy(), v)
        close(ours[k], v)
        for number in np.ravel(v):  # and the chapter prints it
            assert f"{number:.4f}" in text, (k, number)


def test_exercise_1_1_forgetting_the_1_over_n_makes_every_gradient_n_times_too_big():
    m = MLP((6, 5, 3), "tanh", seed=1, dtype=np.float64)
    x, y = rng(5).standard_normal((4, 6)), np.array([0, 1, 2, 1])

    def no_mean(model, x, y):
        loss, d = softmax_cross_entropy(model.forward(x), y)
        model.backward(d * len(y))  # the gradient of the sum, not of the mean
        return loss

    errs = grad_check_model(m, x, y, backward=no_mean)
    # a = N b gives ||a - b|| / (||a|| + ||b||) = (N - 1) / (N + 1) = 3 / 5 for N = 4, for every parameter
    assert all(abs(e - 0.6) < 1e-6 for e in errs.values()), errs


def test_exercise_1_2_one_sgd_step_on_the_worked_example():
    m, (x, y) = example_mlp(), example_xy()
    assert round(m.loss_and_grads(x, y), 4) == 1.2412
    SGD(m, 0.1).step()
    close(m.linears()[0].params["W"], [[0.4289, -0.3], [0.0578, 0.4]])
    close(m.linears()[1].params["W"], [[0.5289, -0.3289], [0.3, 0.8]])
    close(m.linears()[0].params["b"], [0.0289, -0.6])
    close(m.linears()[1].params["b"], [-0.0711, 0.1711])
    close(m.forward(x), [0.2322, -0.0175])
    close(np.exp(-softmax_cross_entropy(m.forward(x), y)[0]), 0.4379)  # the right class's probability
    assert round(m.loss_and_grads(x, y), 4) == 0.8258


def test_exercise_1_3_l1_penalty_gradient_passes_the_check():
    from llmpath.mlp.numpy_mlp import numeric_grad, rel_error

    lam = 0.01
    m = MLP((6, 5, 3), "relu", seed=1, dtype=np.float64)
    x, y = rng(4).standard_normal((7, 6)), np.array([0, 1, 2, 2, 1, 0, 1])

    def loss():
        return softmax_cross_entropy(m.forward(x), y)[0] + lam * sum(np.abs(l.params["W"]).sum() for l in m.linears())

    m.loss_and_grads(x, y)
    for lin in m.linears():
        analytic = lin.grads["W"] + lam * np.sign(lin.params["W"])  # the subgradient of |W|, fine away from 0
        assert np.abs(lin.params["W"]).min() > 1e-5
        assert rel_error(analytic, numeric_grad(loss, lin.params["W"])) < 1e-6


def test_exercise_1_4_exact_gelu_matches_torch():
    import math

    from llmpath.mlp.numpy_mlp import Layer

    class ExactGELU(Layer):
        """x Phi(x); derivative Phi(x) + x phi(x)."""

        def forward(self, x):
            self.x = x
            self.cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
            return x * self.cdf

        def backward(self, dout):
            pdf = np.exp(-0.5 * self.x ** 2) / math.sqrt(2 * math.pi)
            return dout * (self.cdf + self.x * pdf)

    x = rng(12).standard_normal((4, 5)) * 2
    layer = ExactGELU()
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = torch.nn.GELU()(xt)
    g = rng(13).standard_normal(x.shape)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(layer.forward(x), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.backward(g), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert grad_check_layer(ExactGELU(), x)["x"] < TOL


def test_exercise_1_5_sigmoid_gradients_vanish_with_depth_relu_ones_much_less():
    ratios = {}
    for act in ("sigmoid", "relu"):
        m = MLP((20,) + (32,) * 6 + (3,), act, seed=0, dtype=np.float64)
        m.loss_and_grads(rng(0).standard_normal((64, 20)), rng(1).integers(0, 3, 64))
        norms = [np.linalg.norm(l.grads["W"]) for l in m.linears()]
        ratios[act] = norms[0] / norms[-1]  # first layer's gradient against the last one's
    assert ratios["sigmoid"] < 1e-4 and ratios["relu"] > 1e-2, ratios


def test_exercise_1_6_adamw_decouples_weight_decay_like_torch():
    class AdamW(Adam):
        def grad(self, layer, key):
            return layer.grads[key]  # no L2 term in the gradient ...

        def update(self, layer, key, g):
            layer.params[key] *= 1 - self.lr * self.weight_decay  # ... the decay shrinks the weights directly
            super().update(layer, key, g)

    m, t = five_steps_both(lambda m: AdamW(m, 0.01, weight_decay=0.1),
                           lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1))
    for ln, lt in zip(m.linears(), t.linears()):
        np.testing.assert_allclose(ln.params["W"], lt.weight.detach().numpy().T, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(ln.params["b"], lt.bias.detach().numpy(), rtol=1e-7, atol=1e-9)
