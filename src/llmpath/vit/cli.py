"""`llmpath vit ...`: a Vision Transformer against a CNN on handwritten digits.

    llmpath vit train                            # preset small: a ViT on mnist-5k (--arch=cnn: the CNN)
    llmpath vit compare                          # ViT vs CNN at equal epochs and equal seconds, mnist-5k and digits
    llmpath vit ablation                         # patch size, position encoding, depth, augmentation (val accuracy)
    llmpath vit curve                            # test accuracy over training-set fractions
    llmpath vit figures                          # patches, position similarity, attention rollout, filters, errors
    llmpath vit export --dir runs/vit/small-mnist-5k-vit/hf    # ViTForImageClassification.from_pretrained reads it
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from llmpath.common import count_params, get_device, log, map_processes, markdown_table, setup_logging, write_json
from llmpath.config import Command, ConfigError, build_config, opt, parse_seeds
from llmpath.plotting import confusion_matrix, save_fig
from llmpath.runs import load_run, open_folder, run_path, variant
from llmpath.tour import StageResult
from llmpath.vit.experiments import TOPIC, ImageRun, build_model, prepare, train_classifier
from llmpath.vit.figures import (cnn_filters_figure, learning_curve_figure, misclassified_figure, patches_figure,
                                 position_similarity_figure, rollout_figure)
from llmpath.vit.hf import to_hf
from llmpath.vit.model import ViT, ViTConfig

DATASETS = ("mnist-5k", "digits")


def _vit(n_layer: int, n_head: int, n_embd: int) -> dict:
    return {"model.vit.n_layer": n_layer, "model.vit.n_head": n_head, "model.vit.n_embd": n_embd,
            "model.vit.n_ff": 2 * n_embd, "model.vit.patch_size": 0}


def _cnn(c1: int, c2: int, hidden: int) -> dict:
    return {"model.cnn.c1": c1, "model.cnn.c2": c2, "model.cnn.hidden": hidden}


PRESETS: dict[str, dict] = {
    "tiny": {**_vit(1, 2, 16), **_cnn(4, 8, 16), "threads": 1, "data": "digits", "shift": 0, "degrees": 0,
             "train.max_steps": 6, "train.batch_size": 16, "train.warmup_steps": 2, "train.eval_interval": 0,
             "train.progress": False},
    # a ViT of 139k parameters and a CNN of 140k: the CNN at about the ViT's size
    "small": {**_vit(4, 4, 64), **_cnn(16, 32, 80), "threads": 1, "shift": 0, "degrees": 0,
              "train.epochs": 15, "train.batch_size": 64, "train.lr": 1e-3, "train.warmup_steps": 50,
              "train.weight_decay": 0.05, "train.eval_interval": 100},
}
# seconds of the equal-time comparison, per preset and data set (a folder of your own gets the mnist-5k budget)
BUDGET: dict[str, dict[str, float]] = {"tiny": {"mnist-5k": 1, "digits": 1}, "small": {"mnist-5k": 15, "digits": 5}}


def _tag(data: str) -> str:
    return Path(data).name if ("/" in data or "\\" in data) else data


# ------------------------------------------------------------------------------ train

def train(cfg: ImageRun) -> dict:
    """Train one ViT (or --arch=cnn) on --data and test it (or reuse a finished run)."""
    return train_classifier(cfg)


# ----------------------------------------------------------------------------- compare

@dataclass
class CompareRun(ImageRun):
    datasets: str = opt(",".join(DATASETS), "comma-separated image sets (names or folders)")
    budget: float = opt(0.0, "seconds of the equal-time runs (0 = the preset's per data set)", min=0)
    workers: int = opt(1, "runs trained side by side, one process each (use with --threads=1)", min=1, result=False)


def _budget(cfg: CompareRun, data: str) -> float:
    if cfg.budget:
        return cfg.budget
    per = BUDGET.get(cfg.preset or "small", BUDGET["small"])
    return per.get(data, per["mnist-5k"])


def compare_configs(cfg: CompareRun) -> dict[str, dict[str, ImageRun]]:
    """data set -> {"vit", "cnn", "vit-time", "cnn-time"}: the same recipe, equal epochs, then equal seconds."""
    out = {}
    for data in [d.strip() for d in cfg.datasets.split(",") if d.strip()]:
        base = variant(_plain(cfg), _tag(data), data=data)
        s = _budget(cfg, data)
        out[data] = {"vit": variant(base, "vit", arch="vit"), "cnn": variant(base, "cnn", arch="cnn"),
                     "vit-time": variant(base, f"vit-{s:g}s", arch="vit", budget_s=s),
                     "cnn-time": variant(base, f"cnn-{s:g}s", arch="cnn", budget_s=s)}
    return out


def _plain(cfg: ImageRun) -> ImageRun:
    """The training part of a command's config: the runs it trains are plain ImageRuns (load_run rebuilds them)."""
    from llmpath.runs import sub_config

    return sub_config(cfg, ImageRun)


def train_many(configs: list[ImageRun], workers: int) -> list[dict]:
    """Train (or reuse) every run; with workers > 1 in that many processes, longest first as listed."""
    for c in configs:  # refuse a bad option or data set in the parent, before any process starts
        prepare(c)
    return map_processes(train_classifier, configs, workers)


def compare(cfg: CompareRun) -> dict:
    """ViT vs CNN, equal epochs and equal seconds, on each data set: one table."""
    setup_logging()
    grid = compare_configs(cfg)
    order = [(d, k) for k in ("vit", "cnn", "vit-time", "cnn-time") for d in grid]  # the long runs first
    done = train_many([grid[d][k] for d, k in order], cfg.workers)
    results = {d: {} for d in grid}
    for (d, k), r in zip(order, done):
        results[d][k] = r
    out = open_folder(replace(cfg, name=f"{cfg.name or cfg.preset or 'small'}-compare"), TOPIC)
    write_json(out / "results.json", results)
    print(compare_table(results))
    return results


ROW_NAMES = {"cnn": "CNN，相同轮数", "vit": "ViT，相同轮数", "cnn-time": "CNN，相同时间", "vit-time": "ViT，相同时间"}


def compare_table(results: dict) -> str:
    """One row per data set and model: parameters, epochs, seconds, val and test accuracy, macro-F1."""
    rows = []
    for data, runs in results.items():
        for key in ("cnn", "vit", "cnn-time", "vit-time"):
            if key in runs:
                r = runs[key]
                rows.append([_tag(data), ROW_NAMES[key], f"{r['params']:,}", f"{r['epochs']:g}", f"{r['seconds']:.0f}",
                             f"{r['val_acc']:.4f}", f"{r['test_acc']:.4f}", f"{r['test_macro_f1']:.4f}"])
    return markdown_table(["数据", "模型", "参数量", "训练轮数", "训练秒数", "验证准确率", "测试准确率", "测试宏 F1"],
                          rows, "llrrrrrr")


# ---------------------------------------------------------------------------- ablation

@dataclass
class AblationRun(ImageRun):
    seeds: str = opt("0", "comma-separated seeds; with more than one the table shows the mean and the spread")
    workers: int = opt(1, "runs trained side by side, one process each (use with --threads=1)", min=1, result=False)


ABLATIONS = [  # (group, label, overrides): each against the preset's ViT, on the validation split
    ("图块大小", "4×4 像素的图块（7×7 = 49 个词元）", {"patch_size": 4}),
    ("图块大小", "7×7 像素（4×4 = 16 个词元，默认）", {}),
    ("图块大小", "14×14 像素（2×2 = 4 个词元）", {"patch_size": 14}),
    ("位置编码", "无位置编码", {"pos": "none"}),
    ("位置编码", "可学习一维（默认）", {}),
    ("位置编码", "固定二维正弦-余弦", {"pos": "sincos2d"}),
    ("深度", "2 层", {"model.vit.n_layer": 2}),
    ("深度", "4 层（默认）", {}),
    ("深度", "6 层", {"model.vit.n_layer": 6}),
    ("分类读出", "[CLS]（默认）", {}),
    ("分类读出", "图块输出取平均", {"pool": "mean"}),
    ("数据增强", "无（默认）", {}),
    ("数据增强", "平移 ±2 像素 + 旋转 ±10°", {"shift": 2, "degrees": 10}),
]


def ablation_configs(cfg: AblationRun) -> list[tuple[str, str, list[ImageRun]]]:
    """(group, label, one run per seed); a variant that several groups share (the default) is one set of runs."""
    base = variant(_plain(cfg), "ablation", arch="vit")
    out, seen = [], {}
    for group, label, over in ABLATIONS:
        tag = "-".join(f"{k.split('.')[-1]}{v}" for k, v in over.items()) or "default"
        runs = seen.setdefault(tag, [variant(base, tag if s == 0 else f"{tag}-seed{s}", seed=s, **over)
                                     for s in parse_seeds(cfg.seeds)])
        out.append((group, label, runs))
    return out


def ablation(cfg: AblationRun) -> dict:
    """ViT variants on mnist-5k, one change at a time, judged on the validation split (the test split stays unseen)."""
    setup_logging()
    rows = ablation_configs(cfg)
    unique = list({c.name: c for _, _, runs in rows for c in runs}.values())
    by_name = dict(zip([c.name for c in unique], train_many(unique, cfg.workers)))
    results = []
    for group, label, runs in rows:
        accs = [by_name[c.name]["val_acc"] for c in runs]
        first = by_name[runs[0].name]
        results.append({"group": group, "label": label, "params": first["params"], "steps": first["steps"],
                        "seconds": float(np.mean([by_name[c.name]["seconds"] for c in runs])),
                        "val_acc": float(np.mean(accs)), "val_acc_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                        "val_accs": accs})
    out = open_folder(replace(cfg, name=f"{cfg.name or cfg.preset or 'small'}-ablation"), TOPIC)
    write_json(out / "results.json", results)
    print(ablation_table(results))
    return {"rows": results}


def ablation_table(results: list[dict]) -> str:
    n = len(results[0]["val_accs"]) if results else 1
    acc = (lambda r: f"{r['val_acc']:.4f} ± {r['val_acc_std']:.4f}") if n > 1 else (lambda r: f"{r['val_acc']:.4f}")
    head = "验证准确率" + (f"（{n} 个种子的均值 ± 标准差）" if n > 1 else "")
    return markdown_table(["改动", "变体", "参数量", "训练秒数", head],
                          [[r["group"], r["label"], f"{r['params']:,}", f"{r['seconds']:.0f}", acc(r)] for r in results],
                          "llrrr")


# ------------------------------------------------------------------------------- curve

@dataclass
class CurveRun(ImageRun):
    fractions: str = opt("0.1,0.25,0.5,1", "shares of the training split, comma-separated")
    workers: int = opt(1, "runs trained side by side, one process each (use with --threads=1)", min=1, result=False)


def curve(cfg: CurveRun) -> dict:
    """CNN and ViT at each training-set share, the same number of optimizer steps as the full run: test accuracy."""
    setup_logging()
    try:
        shares = sorted({float(f) for f in cfg.fractions.split(",") if f.strip()})
    except ValueError:
        raise ConfigError(f"--fractions expects numbers in (0, 1], e.g. 0.1,0.5,1; got '{cfg.fractions}'") from None
    if not shares or shares[0] <= 0 or shares[-1] > 1:
        raise ConfigError(f"--fractions expects numbers in (0, 1], e.g. 0.1,0.5,1; got '{cfg.fractions}'")
    base = variant(_plain(cfg), _tag(cfg.data))
    full_steps = _steps(base)
    configs = []
    for arch in ("vit", "cnn"):
        for s in shares:
            if s == 1:  # the compare command's run, reused when it exists
                configs.append(variant(base, arch, arch=arch))
            else:
                configs.append(variant(base, f"{arch}-frac{s:g}", arch=arch, train_fraction=s,
                                       **{"train.epochs": 0, "train.max_steps": full_steps}))
    results = train_many(configs, cfg.workers)
    rows = [{"arch": r["arch"], "fraction": c.train_fraction, "train_images": r["train_images"],
             "test_acc": r["test_acc"], "steps": r["steps"]} for c, r in zip(configs, results)]
    out = open_folder(replace(cfg, name=f"{cfg.name or cfg.preset or 'small'}-curve"), TOPIC)
    fig = save_fig(learning_curve_figure(rows), out / "figures" / "learning_curve.png")
    write_json(out / "results.json", {"rows": rows, "figures": [str(fig)]})
    print(curve_table(rows))
    return {"rows": rows, "figures": [fig]}


def _steps(cfg: ImageRun) -> int:
    """Optimizer steps of the full-data run of this recipe."""
    if cfg.train.epochs <= 0:
        return cfg.train.max_steps
    _, train_set, _, _ = prepare(cfg)
    return cfg.train.epochs * (len(train_set) // min(cfg.train.batch_size, len(train_set)))


def curve_table(rows: list[dict]) -> str:
    shares = sorted({r["fraction"] for r in rows})
    acc = {(r["arch"], r["fraction"]): r for r in rows}
    head = ["模型"] + [f"{acc[('vit', s)]['train_images']} 张（{s:.0%}）" for s in shares]
    body = [[name] + [f"{acc[(arch, s)]['test_acc']:.4f}" for s in shares] for arch, name in (("cnn", "CNN"), ("vit", "ViT"))]
    body.append(["差距（CNN − ViT）"] + [f"{acc[('cnn', s)]['test_acc'] - acc[('vit', s)]['test_acc']:+.4f}" for s in shares])
    return markdown_table(head, body, "l" + "r" * len(shares))


# ----------------------------------------------------------------------------- figures

@dataclass
class FiguresRun(ImageRun):
    pass


def figures(cfg: FiguresRun) -> list[Path]:
    """From the compare runs on --data: patches, position similarity, rollout, CNN filters, errors, confusion."""
    setup_logging()
    base = variant(_plain(cfg), _tag(cfg.data))
    vit_dir, cnn_dir = run_path(variant(base, "vit"), TOPIC), run_path(variant(base, "cnn"), TOPIC)
    hint = f"llmpath vit compare --preset={cfg.preset or 'small'}"
    vit, norm, vcfg = load_run(vit_dir, topic=TOPIC, hint=hint)
    cnn, _, _ = load_run(cnn_dir, topic=TOPIC, hint=hint)
    _, _, _, test = prepare(vcfg)
    labels = test.labels.numpy()
    preds = {name: np.load(d / "test_predictions.npz")["pred"] for name, d in (("CNN", cnn_dir), ("ViT", vit_dir))}
    fig_dir = vit_dir / "figures"
    out = [save_fig(patches_figure(test.images[0, 0], vit.cfg.patch_size), fig_dir / "patches.png")]
    if vit.cfg.pos == "learned":
        out.append(save_fig(position_similarity_figure(vit), fig_dir / "position_similarity.png"))
    right, wrong = preds["ViT"] == labels, preds["ViT"] != labels
    pick = [int(np.flatnonzero(right & (labels == c))[0]) for c in np.unique(labels[right])[:6]]
    pick += [int(np.flatnonzero(wrong & (labels == c))[0]) for c in np.unique(labels[wrong])[::3][:2]]
    out.append(save_fig(rollout_figure(vit, test.images[pick], labels[pick], preds["ViT"][pick], norm),
                        fig_dir / "rollout.png"))
    out.append(save_fig(cnn_filters_figure(cnn.conv1.weight), fig_dir / "cnn_filters.png"))
    out.append(save_fig(misclassified_figure(test.images, labels, preds), fig_dir / "misclassified.png"))
    for name, p in preds.items():
        out.append(save_fig(confusion_matrix(labels, p, norm.classes, title=f"{name} 在 {_tag(cfg.data)} 测试集上的混淆矩阵"),
                            fig_dir / f"confusion_{name.lower()}.png"))
    for p in out:
        log.info(f"wrote {p}")
    return out


# ------------------------------------------------------------------------------ export

@dataclass
class ExportRun(ImageRun):
    run: str = opt("", "ViT run folder (default: <out>/vit/<name or preset>-<data>-vit)")
    dir: str = opt("", "folder for config.json + model.safetensors (default: <run>/hf)")


def export(cfg: ExportRun) -> int:
    """Write a trained ViT as a Hugging Face ViTForImageClassification folder."""
    setup_logging()
    src = Path(cfg.run) if cfg.run else run_path(variant(variant(_plain(cfg), _tag(cfg.data)), "vit"), TOPIC)
    model, _, _ = load_run(src, topic=TOPIC, hint=f"llmpath vit compare --preset={cfg.preset or 'small'}")
    if not isinstance(model, ViT):
        raise ConfigError(f"{src} holds a CNN; Hugging Face's ViTForImageClassification takes a ViT run")
    out = Path(cfg.dir) if cfg.dir else src / "hf"
    try:
        to_hf(model, out)
    except ValueError as e:
        raise ConfigError(f"cannot export {src}: {e}") from None
    log.info(f"wrote {out}: transformers.ViTForImageClassification.from_pretrained('{out}') reads it "
             f"(inputs scaled by the run's pixel mean and std)")
    return 0


# -------------------------------------------------------------------------------- tour

def tour(preset: str = "small", out: str = "runs", fresh: bool = False) -> StageResult:
    """Stage 7 of `llmpath tour`: ViT vs CNN on mnist-5k and digits, equal epochs and equal seconds; the figures."""
    cfg = build_config(CompareRun, [f"--preset={preset}", f"--out={out}", f"--fresh={fresh}"], PRESETS)
    cfg.workers = min(2, os.cpu_count() or 1)
    res = compare(cfg)
    cnn, vit = res["mnist-5k"]["cnn"]["test_acc"], res["mnist-5k"]["vit"]["test_acc"]
    shown = figures(build_config(FiguresRun, [f"--preset={preset}", f"--out={out}"], PRESETS))
    return StageResult("mnist-5k test accuracy, ViT", vit, "on mnist-5k test: CNN >= 0.95, ViT >= 0.85 (equal epochs)",
                       cnn >= 0.95 and vit >= 0.85, compare_table(res),
                       [*res["mnist-5k"]["vit"]["figures"], *map(str, shown)])


def smoke() -> str:
    """Doctor check: both ways of cutting patches agree, and a tiny ViT's two attention paths agree."""
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=8, patch_size=4, n_layer=1, n_head=2, n_embd=8, n_ff=16, patchify="conv")
    model = ViT(cfg).eval()
    x = torch.randn(2, 1, 8, 8)
    slow = ViT(replace(cfg, patchify="unfold", sdpa=False)).eval()
    slow.load_state_dict(model.state_dict())
    if not torch.allclose(model(x), slow(x), atol=1e-5):
        raise RuntimeError("Conv2d and unfold patches (or SDPA and hand-written attention) disagree")
    cnn = build_model(replace(ImageRun().model, arch="cnn", cnn=replace(ImageRun().model.cnn, image_size=8)))
    if cnn(x).shape != (2, 10):
        raise RuntimeError("the CNN's output has the wrong shape")
    return f"tiny ViT ok ({count_params(model):,} parameters; Conv2d == unfold patches, SDPA == hand-written attention)"


COMMANDS = {
    "train": Command(train, ImageRun, "train one ViT (or --arch=cnn) on an image set and test it",
                     examples=("llmpath vit train", "llmpath vit train --arch=cnn", "llmpath vit train --data=digits",
                               "llmpath vit train --data=path/to/folder --image_size=32")),
    "compare": Command(compare, CompareRun, "ViT vs CNN at equal epochs and equal seconds on mnist-5k and digits",
                       examples=("llmpath vit compare", "llmpath vit compare --workers=2 --threads=1")),
    "ablation": Command(ablation, AblationRun, "patch size, position encoding, depth, readout, augmentation (val)",
                        examples=("llmpath vit ablation --workers=2",)),
    "curve": Command(curve, CurveRun, "test accuracy of both models over training-set fractions",
                     examples=("llmpath vit curve --workers=2",)),
    "figures": Command(figures, FiguresRun, "patches, position similarity, attention rollout, CNN filters, errors",
                       examples=("llmpath vit figures",)),
    "export": Command(export, ExportRun, "write a ViT run as a Hugging Face ViTForImageClassification folder",
                      examples=("llmpath vit export",)),
}
