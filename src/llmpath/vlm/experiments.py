"""Training the captioner in LLaVA's order, and the chapter's comparison.

    llmpath vlm lm                  # the decoder alone: a language model of the training captions (text only)
    llmpath vlm clip                # the ViT and a text encoder, contrastive (vlm/clip.py)
    llmpath vlm caption             # CLIP's ViT and the caption LM, both frozen: only the projector learns
    llmpath vlm caption --decoder=trained --init_from=runs/vlm/small-caption    # then projector and decoder
    llmpath vlm compare             # frozen vs trained decoder, with and without CLIP: one table

Every stage is its own run folder, and a later stage names the runs it starts from (`--lm_from`, `--clip_from`,
`--init_from`; by default <out>/vlm/<preset>-lm and <preset>-clip), as LLaVA's two stages start from a
pretrained language model and a CLIP vision tower. One captioner writes both languages: the caption starts with a
language tag after [bos] ("zh" or "en", a word of the vocabulary), which the prompt gives and the loss skips.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from llmpath.common import count_params, log, setup_logging
from llmpath.config import ConfigError, RunConfig, TrainConfig, opt, sub
from llmpath.llama.model import Llama, LlamaConfig
from llmpath.plotting import save_fig, training_curves
from llmpath.runs import comparable_config, load_run, reuse, start_run
from llmpath.train import fit, param_groups, read_metrics
from llmpath.vlm.data import LANGS, CaptionRows, CaptionTokenizer, Scenes, build_tokenizer, prompt, scene_splits
from llmpath.vlm.metrics import caption_scores
from llmpath.vlm.model import VLM, VLMConfig, caption, caption_loss, caption_targets

TOPIC = "vlm"


@dataclass
class SceneRun(RunConfig):
    """The scenes a caption LM or a captioner trains on (one split of the digit images whatever --seed says)."""

    kind: Literal["digits", "shapes"] = opt("digits", "digits: mnist-5k digits on a canvas; shapes: rendered shapes")
    min_objects: int = opt(0, "fewest objects in a scene (0 = the kind's default: 2 digits, 1 shape)", min=0, max=4)
    max_objects: int = opt(0, "most objects in a scene (0 = the kind's default: 2 digits, 2 shapes)", min=0, max=4)
    n_train: int = opt(4000, "training scenes (each captioned in both languages)", min=1)
    n_val: int = opt(500, "validation scenes (model selection)", min=1)
    n_test: int = opt(500, "test scenes, from held-out digit images", min=1)

    def check(self) -> None:
        lo, hi = self.objects()
        if lo > hi:
            raise ConfigError(f"--min_objects={lo} is above --max_objects={hi}; give min_objects <= max_objects")

    def objects(self) -> tuple[int, int]:
        lo, hi = {"digits": (2, 2), "shapes": (1, 2)}[self.kind]
        return self.min_objects or lo, self.max_objects or hi

    def splits(self) -> dict[str, Scenes]:
        return scene_splits(self.kind, self.n_train, self.n_val, self.n_test, *self.objects(), seed=0)


def captioner_tokenizer(splits: dict[str, Scenes]) -> CaptionTokenizer:
    """The captions' closed vocabulary plus the two language tags (plain words no caption uses)."""
    return build_tokenizer(splits, zero_shot=False, words=LANGS)


@torch.no_grad()
def mean_loss(model: nn.Module, loss_fn, batches: list) -> float:
    """The loss per predicted token over all batches (each batch's mean weighted by its predicted tokens)."""
    total = count = 0.0
    for batch in batches:
        ids = batch[1] if isinstance(batch, tuple) else batch
        n = float((_targets(ids, 0) != -100).sum())
        total, count = total + n * float(loss_fn(model, batch)), count + n
    return total / max(count, 1.0)


def _targets(ids: Tensor, pad_id: int) -> Tensor:
    """ids[:, 1:] with the pads and the language tag (given by the prompt, never predicted) set to -100."""
    return caption_targets(ids, pad_id, prompt_len=2)


def lm_loss(model: nn.Module, ids: Tensor) -> Tensor:
    """The caption language model's objective: next token of [bos] tag caption [eos], text only."""
    _, loss = model(ids[:, :-1], _targets(ids, 0))
    return loss


def captioner_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """The captioner's objective: the same next-token loss, the image's tokens in front (model.py's caption_loss
    after the two-token prompt)."""
    return caption_loss(model, batch, prompt_len=2)


# ------------------------------------------------------------------------------ the caption LM

LM_DEFAULT = LlamaConfig(block_size=48, n_layer=2, n_head=4, n_embd=64)


@dataclass
class CaptionLMRun(SceneRun):
    model: LlamaConfig = sub(lambda: replace(LM_DEFAULT))
    train: TrainConfig = sub(TrainConfig)


def run_lm(cfg: CaptionLMRun) -> dict:
    """Train the decoder as a language model of the training captions, both languages (or reuse the run)."""
    setup_logging()
    cfg = replace(cfg, name=f"{cfg.name or cfg.preset or 'default'}-lm")
    if (done := reuse(cfg, TOPIC)) is not None:
        return done
    key = comparable_config(cfg)
    splits = cfg.splits()
    tok = captioner_tokenizer(splits)
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=tok.vocab_size))
    longest = max(len(r[1]) for r in CaptionRows(splits["train"], tok, 1).rows)
    if longest - 1 > cfg.model.block_size:
        raise ConfigError(f"--model.block_size={cfg.model.block_size} is shorter than the longest caption "
                          f"({longest - 1} tokens); give at least {longest - 1}")
    run = start_run(cfg, TOPIC, tokenizer=tok, key=key, model_class="llmpath.llama.model:Llama")
    torch.manual_seed(cfg.seed)
    model = Llama(cfg.model)
    batches = CaptionRows(splits["train"], tok, cfg.train.batch_size, seed=cfg.seed, images=False)
    val = CaptionRows(splits["val"], tok, 256, images=False).in_order()
    log.info(f"caption LM {count_params(model):,} parameters: {len(batches.rows)} training captions -> {run.path}")

    def evaluate(m: nn.Module) -> dict:
        return {"val_loss": mean_loss(m, lm_loss, val)}

    res = fit(model, lm_loss, batches, cfg.train, run=run, evaluate=evaluate, unit="samples", restore_best=True)
    curves = save_fig(training_curves(read_metrics(run.path / "metrics.jsonl"), "描述语言模型（只有文字）"),
                      run.figures / "curves.png")
    summary = {"params": count_params(model), "captions": len(batches.rows), "steps": res.step,
               "val_loss": res.best, "seconds": round(res.seconds, 1), "figures": [curves]}
    return run.finish(summary)


# ------------------------------------------------------------------------------ the captioner

STAGE7_RUN = "mnist-5k"  # stage 7's classifiers as `llmpath vit compare` names them: <preset>-mnist-5k-<vit|cnn>


@dataclass
class CaptionRun(SceneRun):
    vision: Literal["supervised", "clip", "scratch", "cnn"] = opt(
        "supervised", "supervised: stage 7's digit classifier (--vit_from), frozen, reading the scene tile by tile; "
        "clip: the ViT of the CLIP run (--clip_from), frozen; scratch: a new ViT of stage 7's shape, tiled, trained; "
        "cnn: stage 7's CNN (--cnn_from), frozen, one token per tile")
    decoder: Literal["frozen", "trained"] = opt("frozen", "the caption LM (--lm_from) frozen, so only the projector "
                                                "(and a scratch ViT) learn: LLaVA stage 1; or trained too: stage 2")
    vision_lr: float = opt(0.0, "a pretrained encoder (supervised, clip or cnn) trains too, at this multiple of the "
                           "learning rate (0: frozen, as LLaVA keeps it)", min=0)
    lm_from: str = opt("", "caption LM run the decoder starts from (default <out>/vlm/<preset>-lm)")
    clip_from: str = opt("", "CLIP run the ViT comes from with --vision=clip (default <out>/vlm/<preset>-clip)")
    vit_from: str = opt("", f"stage-7 ViT run for --vision=supervised (default <out>/vit/<preset>-{STAGE7_RUN}-vit)")
    cnn_from: str = opt("", f"stage-7 CNN run for --vision=cnn (default <out>/vit/<preset>-{STAGE7_RUN}-cnn)")
    init_from: str = opt("", "captioner run to continue from (LLaVA stage 2 starts from stage 1); its ViT, "
                         "projector and decoder replace the ones above")
    max_new_tokens: int = opt(32, "longest generated caption, in tokens", min=1)
    num_beams: int = opt(1, "1: greedy captions; more: beam search (one image at a time)", min=1)
    model: VLMConfig = sub(VLMConfig)
    train: TrainConfig = sub(TrainConfig)

    def source(self, what: str) -> Path:
        preset = self.preset or "small"
        given = {"lm": self.lm_from, "clip": self.clip_from, "vit": self.vit_from, "cnn": self.cnn_from}[what]
        if what in ("vit", "cnn"):
            return Path(given or Path(self.out) / "vit" / f"{preset}-{STAGE7_RUN}-{what}")
        return Path(given or Path(self.out) / TOPIC / f"{preset}-{what}")


STAGE7 = {"vit": ("ViT", "head.", " (or --vision=clip)"), "cnn": ("CNN", "fc2.", "")}  # name, class layer, advice


def _stage7(cfg: CaptionRun, arch: str, size: int, channels: int) -> tuple[dict, dict]:
    """_vision for stage 7's classifiers: the ViT or the CNN of `llmpath vit compare`, its class layer left out."""
    name, head, advice = STAGE7[arch]
    model, norm, run_cfg = load_run(cfg.source(arch), topic="vit",
                                    hint=f"llmpath vit compare --preset={cfg.preset or 'small'}")
    c = getattr(run_cfg.model, arch)
    if run_cfg.model.arch != arch or size % c.image_size:
        raise ConfigError(f"{cfg.source(arch)} is not a {name} whose images tile a {size}-pixel scene; give a "
                          f"stage-7 {name} run on mnist-5k with --{arch}_from")
    if c.channels != channels:
        raise ConfigError(f"{cfg.source(arch)} reads {c.channels}-channel images and these {cfg.kind} scenes have "
                          f"{channels}; use --vision=scratch{advice}")
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}  # no classes here
    return {"tower": arch, arch: replace(c), "tiles": size // c.image_size, "pixel_mean": norm.mean,
            "pixel_std": norm.std}, weights


def _vision(cfg: CaptionRun, size: int, channels: int) -> tuple[dict, dict | None]:
    """(VLMConfig fields for the image encoder: its config, tiles and pixel scaling; its weights or None for a new
    one)."""
    preset = f"--preset={cfg.preset or 'small'}"
    if cfg.vision == "clip":
        clip, _, clip_cfg = load_run(cfg.source("clip"), topic=TOPIC, hint=f"llmpath vlm clip {preset}")
        if not hasattr(clip, "text"):
            raise ConfigError(f"{cfg.source('clip')} is not a CLIP run; train one with `llmpath vlm clip {preset}`")
        m = clip_cfg.model  # the same ViT and the same pixel scaling CLIP trained with
        if m.vit.channels != channels:
            raise ConfigError(f"{cfg.source('clip')} reads {m.vit.channels}-channel images and these {cfg.kind} scenes "
                              f"have {channels}; use --vision=scratch")
        return {"vit": replace(m.vit), "tiles": size // m.vit.image_size, "pixel_mean": m.pixel_mean,
                "pixel_std": m.pixel_std}, clip.vit.state_dict()
    if cfg.vision in ("supervised", "cnn"):
        return _stage7(cfg, "vit" if cfg.vision == "supervised" else "cnn", size, channels)
    train = cfg.splits()["train"].images
    tiles = cfg.model.tiles
    if size % tiles:
        raise ConfigError(f"--model.tiles={tiles} does not divide the {size}-pixel scenes; choose a divisor")
    return {"vit": replace(cfg.model.vit, image_size=size // tiles, channels=channels), "tiles": tiles,
            "pixel_mean": float(train.mean()), "pixel_std": float(train.std())}, None


def build_captioner(cfg: CaptionRun, tok: CaptionTokenizer, size: int, channels: int) -> tuple[CaptionRun, VLM]:
    """(cfg with the sizes filled in from the runs it starts from, the captioner with their weights, frozen as asked)."""
    preset = f"--preset={cfg.preset or 'small'}"
    vision, vit_state = _vision(cfg, size, channels)  # a wrong encoder is refused before anything else is read
    lm, lm_tok, _ = load_run(cfg.source("lm"), topic=TOPIC, hint=f"llmpath vlm lm {preset}")
    if not isinstance(lm, Llama) or lm_tok.state_dict() != tok.state_dict():
        raise ConfigError(f"{cfg.source('lm')} is not a caption LM of these scenes (another vocabulary); train one "
                          f"with `llmpath vlm lm {preset}` and the same --kind/--min_objects/--max_objects")
    decoder = replace(lm.cfg, block_size=cfg.model.decoder.block_size, dropout=cfg.model.decoder.dropout)
    model_cfg = replace(cfg.model, pad_id=tok.pad_id, decoder=decoder, **vision)
    model_cfg.check()
    cfg = replace(cfg, model=model_cfg)
    torch.manual_seed(cfg.seed)
    model = VLM(model_cfg)
    model.decoder.load_state_dict(lm.state_dict())  # RoPE tables are not weights: a longer context loads the same
    if vit_state is not None:
        model.tower.load_state_dict(vit_state)
    if cfg.init_from:
        prev, _, prev_cfg = load_run(Path(cfg.init_from), topic=TOPIC, hint="llmpath vlm caption")
        if not isinstance(prev, VLM) or prev_cfg.model != model_cfg:
            raise ConfigError(f"{cfg.init_from} is not a captioner of the same shape and sources; give a run of "
                              f"`llmpath vlm caption` with the same --vision and preset")
        model.load_state_dict(prev.state_dict())
    model.freeze(vision=cfg.vision != "scratch" and not cfg.vision_lr, decoder=cfg.decoder == "frozen")
    return cfg, model


def captioner_optimizer(model: VLM, cfg: CaptionRun) -> torch.optim.AdamW:
    """The shared loop's AdamW groups, the image encoder's split off to follow the schedule at --vision_lr times the
    rate (a pretrained encoder trained at the decoder's rate forgets what it knew before the decoder learns to read
    it)."""
    tower = {id(p) for p in model.tower.parameters()}
    scale = cfg.vision_lr if cfg.vision != "scratch" and cfg.vision_lr else 1.0
    groups = []
    for g in param_groups(model, cfg.train.weight_decay, cfg.train.decay_embeddings):
        for part_scale, params in ((1.0, [p for p in g["params"] if id(p) not in tower]),
                                   (scale, [p for p in g["params"] if id(p) in tower])):
            if params:
                groups.append({**g, "params": params, "lr_scale": part_scale})
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2))


def test_scores(model: VLM, scenes: Scenes, tok: CaptionTokenizer, max_new_tokens: int = 32,
                num_beams: int = 1) -> dict:
    """{lang: caption scores and a few samples} of greedy (or beam) captions of every scene."""
    out = {}
    for lang in LANGS:
        hyps = caption(model, scenes.images, tok, max_new_tokens, num_beams, prompt=prompt(tok, lang))
        refs = scenes.captions[lang]
        out[lang] = {**caption_scores(hyps, refs, lang, scenes.kind),
                     "samples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:6]]}
    return out


def run_caption(cfg: CaptionRun) -> dict:
    """Train the captioner (what --vision and --decoder leave unfrozen), caption the test scenes, write results.json."""
    setup_logging()
    tuned = f"-tuned{cfg.vision_lr:g}" if cfg.vision_lr and cfg.vision != "scratch" else ""
    cfg = replace(cfg, name=f"{cfg.name or cfg.preset or 'default'}-caption-{cfg.vision}{tuned}-{cfg.decoder}")
    if (done := reuse(cfg, TOPIC)) is not None:
        return done
    key = comparable_config(cfg)
    splits = cfg.splits()
    tok = captioner_tokenizer(splits)
    cfg, model = build_captioner(cfg, tok, splits["train"].images.shape[-1], splits["train"].images.shape[1])
    run = start_run(cfg, TOPIC, tokenizer=tok, key=key)
    batches = CaptionRows(splits["train"], tok, cfg.train.batch_size, seed=cfg.seed)
    val = CaptionRows(splits["val"], tok, 256).in_order()
    trained, total = count_params(model), count_params(model, trainable_only=False)
    log.info(f"captioner ({cfg.vision} encoder, {cfg.decoder} decoder): {trained:,} of {total:,} "
             f"parameters train on {len(batches.rows)} captions -> {run.path}")

    def evaluate(m: nn.Module) -> dict:
        return {"val_loss": mean_loss(m, captioner_loss, val)}

    res = fit(model, captioner_loss, batches, cfg.train, run=run, evaluate=evaluate, unit="samples",
              restore_best=True, optimizer=captioner_optimizer(model, cfg))
    scores = test_scores(model, splits["test"], tok, cfg.max_new_tokens, cfg.num_beams)
    curves = save_fig(training_curves(read_metrics(run.path / "metrics.jsonl"),
                                      f"描述模型（图像编码器：{cfg.vision}，解码器：{cfg.decoder}）"), run.figures / "curves.png")
    summary = {"vision": cfg.vision, "decoder": cfg.decoder, "params": total, "trained_params": trained,
               "steps": res.step, "val_loss": res.best, "seconds": round(res.seconds, 1), "test": scores,
               "figures": [curves]}
    summary = run.finish(summary)
    log.info(f"captioner ({cfg.vision} encoder, {cfg.decoder} decoder): exact match "
             + ", ".join(f"{lang} {scores[lang]['exact_match']:.3f}" for lang in LANGS)
             + f" after {res.step} steps in {res.seconds:.0f} s")
    return summary


# ------------------------------------------------------------------------------ the comparison

LM_PRESETS: dict[str, dict] = {
    "tiny": {"threads": 1, "n_train": 64, "n_val": 16, "n_test": 16, "model.n_layer": 1, "model.n_head": 2,
             "model.n_embd": 16, "train.max_steps": 4, "train.batch_size": 16, "train.warmup_steps": 1,
             "train.eval_interval": 0, "train.progress": False},
    "small": {"threads": 1, "train.max_steps": 300, "train.batch_size": 64, "train.lr": 3e-3, "train.warmup_steps": 30,
              "train.eval_interval": 100},
}
_TINY_VIT = {"model.vit.n_layer": 1, "model.vit.n_head": 2, "model.vit.n_embd": 16, "model.vit.n_ff": 32}
# the captioner reads a 56-pixel scene as 2 x 2 tiles of 28 pixels: a new ViT gets stage 7's shape, so that the
# three image encoders of the comparison differ only in how they were trained
_TILED = {"model.tiles": 2, "model.vit.image_size": 28, "model.vit.patch_size": 7, "model.drop_cls": False}
CAPTION_PRESETS: dict[str, dict] = {
    "tiny": {**{k: v for k, v in LM_PRESETS["tiny"].items() if not k.startswith("model.")}, **_TINY_VIT, **_TILED,
             "model.decoder.block_size": 96, "max_new_tokens": 12},
    "small": {**_TILED, "threads": 1, "train.max_steps": 600, "train.batch_size": 64, "train.lr": 2e-3,
              "train.warmup_steps": 30, "train.eval_interval": 200},
}
# (vision, decoder): LLaVA's stage 1 (only the projector learns) and the three encoders with the decoder trained
VARIANTS: dict[str, tuple[str, str]] = {
    "supervised-frozen": ("supervised", "frozen"), "supervised-trained": ("supervised", "trained"),
    "clip-trained": ("clip", "trained"), "scratch-trained": ("scratch", "trained"), "cnn-trained": ("cnn", "trained"),
}
VARIANT_NAMES = {"supervised-frozen": "第 7 章的 ViT（冻结）+ 冻结的解码器：只训练投影层",
                 "supervised-trained": "第 7 章的 ViT（冻结）+ 训练解码器",
                 "clip-trained": "CLIP 的 ViT（冻结）+ 训练解码器",
                 "scratch-trained": "从零训练的 ViT + 训练解码器",
                 "cnn-trained": "第 7 章的 CNN（冻结，每块一个向量）+ 训练解码器"}
_SHARED = ("preset", "out", "fresh", "threads", "seed", "device")  # the options every run of the chain takes


@dataclass
class CompareRun(RunConfig):
    """The chain's own options; every run in it takes its sizes and steps from the preset (change one run with its
    own command, e.g. `llmpath vlm caption --train.max_steps=...`, before running the chain)."""

    max_new_tokens: int = opt(32, "longest generated caption, in tokens", min=1)
    workers: int = opt(1, "runs trained side by side, one process each (use with --threads=1)", min=1, result=False)


COMPARE_PRESETS: dict[str, dict] = {"tiny": {"threads": 1, "max_new_tokens": 12}, "small": {"threads": 1}}


def _job(job: tuple) -> dict:
    """One run of the chain from its command-line options (module level: it runs in a worker process)."""
    from llmpath.config import build_config
    from llmpath.vlm.clip import CLIP_PRESETS, CLIPRun, run_clip

    kind, args = job
    if kind in ("vit", "cnn"):  # stage 7's ViT or CNN on mnist-5k, as `llmpath vit compare` trains it (reused)
        from llmpath.vit.cli import PRESETS as VIT_PRESETS
        from llmpath.vit.cli import CompareRun as VitCompare
        from llmpath.vit.cli import compare_configs
        from llmpath.vit.experiments import train_classifier

        return train_classifier(compare_configs(build_config(VitCompare, args, VIT_PRESETS))["mnist-5k"][kind])
    cls, presets, fn = {"lm": (CaptionLMRun, LM_PRESETS, run_lm), "clip": (CLIPRun, CLIP_PRESETS, run_clip)}.get(
        kind, (CaptionRun, CAPTION_PRESETS, run_caption))
    return fn(build_config(cls, args, presets))


def compare_jobs(cfg: CompareRun) -> tuple[dict[str, tuple], dict[str, tuple[str, ...]]]:
    """(jobs, what each waits for): stage 7's ViT, CLIP and the caption LM, then the captioners."""
    shared = [f"--{k}={getattr(cfg, k)}" for k in _SHARED]
    kept = [a for a in shared if not a.startswith("--fresh")]  # stage 7's own run: --fresh is that stage's business
    jobs: dict[str, tuple] = {"clip": ("clip", shared), "vit": ("vit", kept), "lm": ("lm", shared),
                              "cnn": ("cnn", kept)}  # longest first
    after: dict[str, tuple[str, ...]] = {}
    for name, (vision, decoder) in VARIANTS.items():
        jobs[name] = (name, [*shared, f"--vision={vision}", f"--decoder={decoder}",
                             f"--max_new_tokens={cfg.max_new_tokens}"])
        after[name] = ("lm", {"supervised": "vit", "clip": "clip", "cnn": "cnn"}.get(vision, "lm"))
    return jobs, after


def compare(cfg: CompareRun) -> dict:
    """The caption LM, CLIP and the five captioners (each reused when finished); the table of all of them."""
    from llmpath.common import map_after

    setup_logging()
    jobs, after = compare_jobs(cfg)
    return map_after(_job, jobs, after, cfg.workers)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def compare_table(results: dict) -> str:
    """One row per captioner: trained parameters, then exact match, digits, positions, BLEU and chrF per language."""
    head = ["描述模型", "训练的参数"]
    for lang in LANGS:
        head += [f"{lang} 完全匹配 %", f"{lang} 数字 %", f"{lang} 位置 %", f"{lang} BLEU", f"{lang} chrF"]
    rows = []
    for name in VARIANTS:
        r = results[name]
        row = [VARIANT_NAMES[name], f"{r['trained_params']:,}"]
        for lang in LANGS:
            t = r["test"][lang]
            row += [_pct(t["exact_match"]), _pct(t.get("digit_acc", 0.0)), _pct(t.get("position_acc", 0.0)),
                    f"{t['bleu']:.1f}", f"{t['chrf']:.1f}"]
        rows.append(row)
    from llmpath.common import markdown_table

    return markdown_table(head, rows)
