"""`llmpath mlp ...`: TF-IDF text classification with a NumPy MLP, a torch MLP and a baseline.

    llmpath mlp train                              # tweets + chinese-reviews, preset small
    llmpath mlp train --data=tweets --hidden=128
    llmpath mlp train --data=my.csv                # columns text,label
    llmpath mlp eval                               # re-score the saved models on test
    llmpath mlp plot                               # decision boundaries, activations, optimizers
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from llmpath.common import log, markdown_table, read_json, seed_everything, set_threads, setup_logging, write_json
from llmpath.config import Command, ConfigError, RunConfig, TrainConfig, opt
from llmpath.data import EpochBatches
from llmpath.mlp import experiments
from llmpath.mlp.features import Features, build_features
from llmpath.mlp.model import TorchMLP, classification_loss, predict_logits, sparse_rows_to_tensor
from llmpath.mlp.numpy_mlp import MLP, make_optimizer, train_numpy
from llmpath.plotting import confusion_matrix, save_fig, training_curves
from llmpath.runs import open_folder, reuse, run_path, start_run
from llmpath.tour import StageResult
from llmpath.train import fit, load_weights, read_metrics

TOPIC = "mlp"
MODELS = ("baseline", "numpy_mlp", "torch_mlp")


@dataclass
class MLPRun(RunConfig):
    data: str = opt("tweets,chinese-reviews", "comma-separated datasets (built-in names or .csv/.jsonl with text,label)")
    max_features: int = opt(20000, "TF-IDF vocabulary size (most frequent n-grams of the train split)", min=1)
    ngram_max: int = opt(2, "n-grams 1..N: words for English, characters for Chinese", min=1)
    max_train: int = opt(0, "use a seeded random N of the training texts (0 = all)", min=0)
    hidden: int = opt(64, "hidden units of the one hidden layer", min=1)
    activation: Literal["relu", "tanh", "sigmoid", "gelu"] = opt("relu", "hidden activation")
    dropout: float = opt(0.3, "dropout after the hidden layer (both MLPs)", min=0, below=1)
    batch: int = opt(64, "NumPy MLP mini-batch size", min=1)
    optimizer: Literal["sgd", "momentum", "adam"] = opt("adam", "NumPy MLP optimizer")
    np_lr: float = opt(1e-3, "NumPy MLP learning rate", above=0)
    np_weight_decay: float = opt(0.0, "NumPy MLP L2 penalty on weights", min=0)
    baseline_c: str = opt("1,2,4", "LogisticRegression C values; the best on val is used")
    figures: bool = opt(True, "train: also draw the intuition figures (llmpath mlp plot)")
    boundary_epochs: int = opt(150, "plot: epochs of the 2-D decision-boundary models", min=1)
    opt_steps: int = opt(300, "plot: steps of the optimizer comparison", min=1)
    # train.epochs: passes over the train split for both MLPs (the best epoch on val is kept)
    train: TrainConfig = opt(TrainConfig(epochs=3), "the torch MLP's fit loop; epochs and batch size serve both MLPs")


_TINY = {"threads": 1, "max_train": 1500, "max_features": 2000, "hidden": 16, "train.epochs": 2, "baseline_c": "1",
         "np_lr": 1e-2, "train.lr": 1e-2, "boundary_epochs": 20, "opt_steps": 40, "train.batch_size": 64,
         "train.warmup_steps": 5, "train.eval_interval": 0, "train.progress": False, "train.log_interval": 5}
# threads 1: the matrices are small (64 x 20k), and with 2 threads torch spends more on syncing
# than it gains (11 ms vs 84 ms a step on a busy 2-core machine).
_SMALL = {"threads": 1, "train.batch_size": 64, "train.lr": 1e-3, "train.warmup_steps": 50,
          "train.eval_interval": 0, "train.log_interval": 20, "train.progress": False}
PRESETS: dict[str, dict] = {
    "tiny": _TINY,  # tests: seconds
    "small": _SMALL,  # the tour: about a minute on 2 cores, both datasets, three models
}


# ------------------------------------------------------------------------------ helpers

def metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    return {"accuracy": float((y_true == y_pred).mean()),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro"))}


def datasets(cfg: MLPRun) -> list[str]:
    names = [d.strip() for d in cfg.data.split(",") if d.strip()]
    if not names:
        raise ConfigError("--data is empty; e.g. --data=tweets or --data=tweets,chinese-reviews")
    return names


def slug(name: str) -> str:
    return Path(name).stem if ("/" in name or "." in name) else name


def features_for(cfg: MLPRun, name: str) -> Features:
    return build_features(name, cfg.max_features, cfg.ngram_max, cfg.seed, cfg.max_train)


def train_baseline(cfg: MLPRun, f: Features) -> tuple[LogisticRegression, dict]:
    """LogisticRegression on the same features; C chosen on val accuracy."""
    best = None
    for c in [float(v) for v in cfg.baseline_c.split(",") if v.strip()]:
        clf = LogisticRegression(C=c, max_iter=300).fit(f.x_train, f.y_train)
        acc = float((clf.predict(f.x_val) == f.y_val).mean())
        log.info(f"  baseline C={c:g}: val acc {acc:.4f}")
        if best is None or acc > best[1]:
            best = (clf, acc, c)
    return best[0], {"C": best[2], "val_accuracy": best[1]}


def train_numpy_mlp(cfg: MLPRun, f: Features) -> tuple[MLP, dict]:
    m = MLP((f.n_features, cfg.hidden, len(f.label_names)), cfg.activation, seed=cfg.seed, dropout=cfg.dropout)
    opt_ = make_optimizer(cfg.optimizer, m, cfg.np_lr, cfg.np_weight_decay)
    h = train_numpy(m, f.x_train, f.y_train, opt_, cfg.train.epochs, cfg.batch, cfg.seed, f.x_val, f.y_val)
    return m, {"val_accuracy": h.best_acc, "best_epoch": h.best_epoch + 1, "val_acc_per_epoch": h.val_acc}


def train_torch_mlp(cfg: MLPRun, f: Features, run: Path, device) -> tuple[TorchMLP, dict]:
    torch.manual_seed(cfg.seed)
    model = TorchMLP((f.n_features, cfg.hidden, len(f.label_names)), cfg.activation, cfg.dropout)
    y = torch.from_numpy(f.y_train)
    batches = EpochBatches(f.x_train.shape[0], cfg.train.batch_size,
                           lambda idx: (sparse_rows_to_tensor(f.x_train, idx), y[idx]), seed=cfg.seed)
    tcfg = cfg.train
    if tcfg.eval_interval <= 0:  # evaluate after every epoch, keep the best on val
        tcfg = replace(tcfg, eval_interval=batches.per_epoch)

    def evaluate(m):
        logits = predict_logits(m, f.x_val, device)
        lv = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(f.y_val)).item()
        return {"val_loss": lv, "val_acc": float((logits.argmax(1) == f.y_val).mean())}

    res = fit(model, classification_loss, batches, tcfg, run_dir=run, evaluate=evaluate, device=device,
              config=cfg, best_metric="val_acc", best_mode="max", restore_best=True)
    return model, {"val_accuracy": res.best, "steps": res.step}


def results_table(results: dict) -> str:
    rows = [[ds, m, f"{100 * r[m]['test']['accuracy']:.2f}", f"{100 * r[m]['test']['macro_f1']:.2f}"]
            for ds, r in results["datasets"].items() for m in MODELS]
    return markdown_table(["数据集", "模型", "测试集准确率", "测试集宏 F1"], rows, "llrr")


def bar(results: dict) -> dict:
    """The MLPs match (within 1 point of accuracy) or beat the baseline on every dataset."""
    checks = {}
    for ds, r in results["datasets"].items():
        base = r["baseline"]["test"]["accuracy"]
        checks[ds] = {m: r[m]["test"]["accuracy"] >= base - 0.01 for m in ("numpy_mlp", "torch_mlp")}
    return {"passed": all(all(v.values()) for v in checks.values()), "checks": checks}


# -------------------------------------------------------------------------------- train

def train(cfg: MLPRun) -> dict:
    """Baseline, NumPy MLP and torch MLP on each dataset; results.json, the table and figures."""
    from threadpoolctl import threadpool_limits  # comes with scikit-learn

    # --threads also caps NumPy's BLAS (the NumPy MLP, LogisticRegression), not only torch; both
    # are restored afterwards, so later tour stages in the same process keep their thread count
    torch_threads = torch.get_num_threads()
    try:
        with threadpool_limits(cfg.threads if cfg.threads > 0 else None):
            return _train(cfg)
    finally:
        torch.set_num_threads(torch_threads)


def _train(cfg: MLPRun) -> dict:
    if (done := reuse(cfg, TOPIC)) is not None:
        print(results_table(done))
        return done
    run_ = start_run(cfg, TOPIC)
    run, device = run_.path, run_.device
    t_all = time.time()
    results: dict = {"preset": cfg.preset, "datasets": {}}
    figures: list[str] = []
    for name in datasets(cfg):
        ds = slug(name)
        t0 = time.time()
        f = features_for(cfg, name)
        log.info(f"{name}: {f.x_train.shape[0]} train / {len(f.y_val)} val / {len(f.y_test)} test texts, "
                 f"{f.n_features} TF-IDF features ({'char' if f.chinese else 'word'} 1-{cfg.ngram_max}-grams)")
        r: dict = {"labels": f.label_names, "n_features": f.n_features, "n_train": int(f.x_train.shape[0])}
        t1 = time.time()
        clf, info = train_baseline(cfg, f)
        r["baseline"] = {**info, "test": metrics(f.y_test, clf.predict(f.x_test)), "seconds": round(time.time() - t1, 1)}
        seed_everything(cfg.seed)
        t1 = time.time()
        np_model, info = train_numpy_mlp(cfg, f)
        info["seconds"] = round(time.time() - t1, 1)
        (run / ds).mkdir(exist_ok=True)
        np.savez(run / ds / "numpy_mlp.npz", *np_model.state())
        r["numpy_mlp"] = {**info, "test": metrics(f.y_test, np_model.predict(f.x_test))}
        t1 = time.time()
        t_model, info = train_torch_mlp(cfg, f, run / ds, device)
        info["seconds"] = round(time.time() - t1, 1)
        pred = predict_logits(t_model, f.x_test, device).argmax(1)
        r["torch_mlp"] = {**info, "test": metrics(f.y_test, pred)}
        r["seconds"] = round(time.time() - t0, 1)
        figures.append(str(save_fig(confusion_matrix(f.y_test, pred, f.label_names, f"{ds}：torch MLP（测试集）"),
                                    run / "figures" / f"confusion_{ds}.png")))
        figures.append(str(save_fig(training_curves(read_metrics(run / ds / "metrics.jsonl"), f"{ds}：torch MLP 的训练曲线"),
                                    run / "figures" / f"curves_{ds}.png")))
        results["datasets"][ds] = r
        log.info(f"{ds}: " + ", ".join(f"{m} acc {100 * r[m]['test']['accuracy']:.2f}" for m in MODELS)
                 + f" ({r['seconds']:.0f} s)")
    if cfg.figures:
        figures += plot(cfg, run=run)["figures"]
    results["bar"] = bar(results)
    results["seconds"] = round(time.time() - t_all, 1)
    results["figures"] = figures
    results = run_.finish(results)
    print(results_table(results))
    print(f"bar (MLP within 1 point of the baseline or better on every dataset): "
          f"{'PASS' if results['bar']['passed'] else 'FAIL'}; {results['seconds']:.0f} s; {run / 'results.json'}")
    return results


# --------------------------------------------------------------------------------- eval

def evaluate(cfg: MLPRun) -> dict:
    """Re-score the saved NumPy and torch MLPs of a finished run on the test split."""
    setup_logging()
    set_threads(cfg.threads)
    run = run_path(cfg, TOPIC)
    if not (run / "results.json").exists():
        raise ConfigError(f"no finished run in {run}; train first: llmpath mlp train"
                          + (f" --preset={cfg.preset}" if cfg.preset else ""))
    saved = read_json(run / "results.json")
    out = {}
    for name in datasets(cfg):
        ds = slug(name)
        if ds not in saved["datasets"]:
            raise ConfigError(f"{run} has no '{ds}'; it has: {', '.join(saved['datasets'])}")
        f = features_for(cfg, name)
        k = len(f.label_names)
        m = MLP((f.n_features, cfg.hidden, k), cfg.activation, dropout=cfg.dropout)
        with np.load(run / ds / "numpy_mlp.npz") as z:
            m.load_state([z[f"arr_{i}"] for i in range(len(z.files))])
        t = TorchMLP((f.n_features, cfg.hidden, k), cfg.activation, cfg.dropout)
        load_weights(t, run / ds / "ckpt" / "best.pt")
        out[ds] = {"baseline": saved["datasets"][ds]["baseline"],
                   "numpy_mlp": {"test": metrics(f.y_test, m.predict(f.x_test))},
                   "torch_mlp": {"test": metrics(f.y_test, predict_logits(t, f.x_test).argmax(1))}}
    res = {"datasets": out}
    print(results_table(res))
    return res


# --------------------------------------------------------------------------------- plot

def plot(cfg: MLPRun, run: Path | None = None) -> dict:
    """Decision boundaries (two-moons, XOR), activations and derivatives, SGD vs momentum vs Adam."""
    if run is None:
        run = open_folder(cfg, TOPIC)
    name = datasets(cfg)[0]
    f = features_for(cfg, name)
    # a random 4000 of train (the split is sorted by index and the files by label)
    idx = np.sort(np.random.default_rng(cfg.seed).permutation(f.x_train.shape[0])[:4000])
    opt_data = (f.x_train[idx], f.y_train[idx], f.n_features, len(f.label_names))
    info = experiments.save_all(run / "figures", opt_data, cfg.seed, cfg.boundary_epochs, cfg.opt_steps)
    write_json(run / "figures.json", info)
    log.info(f"figures in {run / 'figures'}")
    return info


# ------------------------------------------------------------------------- tour, smoke

def tour(preset: str = "small", out: str = "runs", fresh: bool = False) -> StageResult:
    """Stage 1 of `llmpath tour`: the three models on both datasets, the table, the figures."""
    from llmpath.config import build_config

    cfg = build_config(MLPRun, [f"--preset={preset}", f"--out={out}", f"--fresh={fresh}"], PRESETS)
    res = train(cfg)
    worst = min(min(r[m]["test"]["accuracy"] - r["baseline"]["test"]["accuracy"] for m in ("numpy_mlp", "torch_mlp"))
                for r in res["datasets"].values())
    return StageResult("worst MLP - baseline test accuracy (points)", round(100 * worst, 2),
                       ">= -1 point on tweets and chinese-reviews", bool(res["bar"]["passed"]), results_table(res),
                       res["figures"])


def smoke() -> str:
    """Doctor check: NumPy and torch MLPs agree on a forward pass; one backward pass is finite."""
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    m = MLP((6, 5, 3), seed=0)
    t = TorchMLP((6, 5, 3)).from_numpy(m)
    with torch.no_grad():
        ref = t(torch.from_numpy(x)).numpy()
    if not np.allclose(m(x), ref, atol=1e-5):
        raise RuntimeError("NumPy MLP and torch MLP disagree on the same weights")
    loss = m.loss_and_grads(x, np.array([0, 1, 2, 0]))
    if not np.isfinite(loss):
        raise RuntimeError("NumPy MLP loss is not finite")
    return "NumPy MLP forward/backward ok (== torch)"


COMMANDS = {
    "train": Command(train, MLPRun,
                     "baseline + NumPy MLP + torch MLP on --data; prints the table, writes results.json and figures",
                     examples=("llmpath mlp train", "llmpath mlp train --preset=tiny --data=tweets",
                               "llmpath mlp train --data=my.csv --hidden=128 --epochs=5")),
    "eval": Command(evaluate, MLPRun, "re-score a finished run's saved MLPs on the test split",
                    examples=("llmpath mlp eval", "llmpath mlp eval --preset=tiny")),
    "plot": Command(plot, MLPRun,
                    "intuition figures: decision boundaries, activations, SGD vs momentum vs Adam",
                    examples=("llmpath mlp plot", "llmpath mlp plot --preset=tiny")),
}
