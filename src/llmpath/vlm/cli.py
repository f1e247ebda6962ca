"""`llmpath vlm ...`: a tiny vision-language model: CLIP, and a LLaVA-style captioner of digit scenes.

    llmpath vlm data                    # the data card and a figure of scenes with their captions
    llmpath vlm clip                    # contrastive pretraining: retrieval recall@1/5, zero-shot digits
    llmpath vlm lm                      # the decoder as a language model of the captions (text only)
    llmpath vlm caption                 # CLIP's ViT + projector + the caption LM: only the projector learns
    llmpath vlm caption --decoder=trained --init_from=runs/vlm/small-caption-clip-frozen
    llmpath vlm compare --workers=2     # all of the above, five captioners, one table
    llmpath vlm describe --run=runs/vlm/small-caption-clip-trained --num_beams=3
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from llmpath.common import markdown_table, setup_logging, write_json
from llmpath.config import Command, ConfigError, build_config, opt
from llmpath.plotting import save_fig
from llmpath.runs import load_run, open_folder
from llmpath.tour import StageResult
from llmpath.vlm.clip import CLIP_PRESETS, CLIPRun, run_clip
from llmpath.vlm.data import LANGS, data_card, scenes_figure
from llmpath.vlm.experiments import (CAPTION_PRESETS, COMPARE_PRESETS, LM_PRESETS, TOPIC, VARIANT_NAMES, VARIANTS,
                                     CaptionLMRun, CaptionRun, CompareRun, SceneRun, compare, compare_table, prompt,
                                     run_caption, run_lm)
from llmpath.vlm.figures import attention_figure
from llmpath.vlm.model import VLM, caption

SCENE_PRESETS = {name: {k: v for k, v in p.items() if k.startswith(("n_", "threads"))}
                 for name, p in CAPTION_PRESETS.items()}


def data(cfg: SceneRun) -> str:
    """Print the data card of the scenes and draw a few of them."""
    setup_logging()
    splits = cfg.splits()
    card = data_card(splits)
    out = open_folder(replace(cfg, name=f"{cfg.name or cfg.preset or 'default'}-data"), TOPIC)
    fig = save_fig(scenes_figure(splits["train"], n=8), out / "figures" / f"{cfg.kind}.png")
    print(card)
    print(f"\nfigure: {fig}")
    return card


def clip(cfg: CLIPRun) -> dict:
    res = run_clip(cfg)
    print(clip_table(res))
    return res


def clip_table(res: dict, supervised: float | None = None) -> str:
    """Retrieval recall@1/5 both ways and zero-shot digit accuracy, per caption language."""
    rows = []
    for lang in LANGS:
        if f"test_{lang}_i2t@1" not in res:
            continue
        rows.append([lang] + [f"{100 * res[f'test_{lang}_{k}']:.1f}" for k in ("i2t@1", "i2t@5", "t2i@1", "t2i@5")]
                    + [f"{100 * res[f'zero_shot_{lang}']:.1f}"])
    table = markdown_table(["描述语言", "图→文 R@1 %", "图→文 R@5 %", "文→图 R@1 %", "文→图 R@5 %", "零样本数字 %"], rows)
    if supervised is not None:
        table += f"\n\n同一批测试数字上，第 7 章有监督训练的 ViT（单个数字，28×28）准确率 {100 * supervised:.1f}%。"
    return table


def lm(cfg: CaptionLMRun) -> dict:
    res = run_lm(cfg)
    print(f"caption LM: val loss {res['val_loss']:.3f} after {res['steps']} steps")
    return res


def caption_cmd(cfg: CaptionRun) -> dict:
    res = run_caption(cfg)
    rows = [[lang, *(f"{100 * res['test'][lang][k]:.1f}" for k in ("exact_match", "digit_acc", "position_acc")),
             f"{res['test'][lang]['bleu']:.1f}"] for lang in LANGS if "digit_acc" in res["test"][lang]]
    if rows:
        print(markdown_table(["语言", "完全匹配 %", "数字 %", "位置 %", "BLEU"], rows))
    for lang in LANGS:
        for s in res["test"][lang]["samples"][:3]:
            print(f"{lang}: {s['hyp']}    (reference: {s['ref']})")
    return res


def compare_cmd(cfg: CompareRun) -> dict:
    """The whole chain and the table; results.json and the table under <out>/vlm/<preset>-compare."""
    res = compare(cfg)
    table = compare_table(res)
    supervised = supervised_vit(cfg.out, cfg.preset)
    out = open_folder(CompareRun(name=f"{cfg.preset or 'small'}-compare", out=cfg.out), TOPIC)
    write_json(out / "results.json", res)
    print(clip_table(res["clip"], supervised) + "\n\n" + table)
    return {**res, "table": table, "clip_table": clip_table(res["clip"], supervised)}


def supervised_vit(out: str, preset: str) -> float | None:
    """Test accuracy of stage 7's ViT on mnist-5k (the same test digits), when that run exists."""
    import json

    path = Path(out) / "vit" / f"{preset or 'small'}-mnist-5k-vit" / "results.json"
    try:
        return float(json.loads(path.read_text(encoding="utf-8"))["test_acc"])
    except (OSError, ValueError, KeyError):
        return None


@dataclass
class DescribeRun(CaptionRun):
    run: str = opt("", "captioner run folder (default <out>/vlm/<preset>-caption-supervised-trained)")
    n: int = opt(8, "test scenes to describe", min=1)


def describe(cfg: DescribeRun) -> list[str]:
    """Caption the first --n test scenes in both languages and draw where each word looks."""
    setup_logging()
    path = Path(cfg.run or Path(cfg.out) / TOPIC / f"{cfg.preset or 'small'}-caption-supervised-trained")
    model, tok, run_cfg = load_run(path, topic=TOPIC, hint="llmpath vlm compare")
    if not isinstance(model, VLM):
        raise ConfigError(f"{path} is not a captioner run; give one of `llmpath vlm caption`")
    test = run_cfg.splits()["test"].subset(range(min(cfg.n, run_cfg.n_test)))
    lines = []
    for lang in LANGS:
        hyps = caption(model, test.images, tok, cfg.max_new_tokens, cfg.num_beams, prompt=prompt(tok, lang))
        lines += [f"{lang}: {h}    (reference: {r})" for h, r in zip(hyps, test.captions[lang])]
    fig = save_fig(attention_figure(model, tok, test.images[0], "zh"), path / "figures" / "attention.png")
    print("\n".join(lines) + f"\n\nfigure: {fig}")
    return lines


# ------------------------------------------------------------------------------------ tour, doctor

BARS = {"small": 0.8, "tiny": 0.0}  # 2-digit caption exact match of the best captioner, in both languages


def tour(preset: str = "small", out: str = "runs", fresh: bool = False) -> StageResult:
    """Stage 13 of `llmpath tour`: stage 7's ViT, CLIP and the caption LM, then five captioners; the two tables and the
    figures."""
    cores = 1 if preset == "tiny" else min(2, os.cpu_count() or 1)
    cfg = build_config(CompareRun, [f"--preset={preset}", f"--out={out}", f"--fresh={fresh}", "--threads=1",
                                    f"--workers={cores}"], COMPARE_PRESETS)
    res = compare_cmd(cfg)
    worse = {k: min(res[k]["test"][lang]["exact_match"] for lang in LANGS) for k in VARIANTS}
    best = max(worse, key=worse.get)  # the captioner whose worse language is best
    bar = BARS.get(preset, BARS["small"])
    model, tok, _ = load_run(Path(out) / TOPIC / f"{preset}-caption-supervised-trained", topic=TOPIC)
    splits = build_config(CaptionRun, [f"--preset={preset}"], CAPTION_PRESETS).splits()
    folder = Path(out) / TOPIC / f"{preset}-compare" / "figures"
    shown = [save_fig(scenes_figure(splits["train"], n=8), folder / "scenes.png"),
             save_fig(attention_figure(model, tok, splits["test"].images[0], "zh"), folder / "attention.png")]
    figures = [*shown, *res["clip"].get("figures", [])]
    samples = "\n".join(f"- {lang}: {s['hyp']}（参考：{s['ref']}）" for lang in LANGS
                        for s in res[best]["test"][lang]["samples"][:2])
    table = (res["clip_table"] + "\n\n" + res["table"] + f"\n\n{VARIANT_NAMES[best]}，测试图的描述：\n" + samples)
    return StageResult(f"2-digit caption exact match, worse language, best captioner ({best})", worse[best],
                       f">= {bar:.2f} in both languages", worse[best] >= bar, table, figures)


def smoke() -> str:
    """Doctor check: a tiny captioner's loss ignores padding, and greedy captions come back as text."""
    from llmpath.llama.model import LlamaConfig
    from llmpath.vit.model import ViTConfig
    from llmpath.vlm.data import CaptionTokenizer
    from llmpath.vlm.experiments import captioner_loss
    from llmpath.vlm.model import VLMConfig

    tok = CaptionTokenizer.build(["左边是 3，右边是 7", "zh", "en"])
    torch.manual_seed(0)
    model = VLM(VLMConfig(vit=ViTConfig(image_size=8, patch_size=4, n_layer=1, n_head=2, n_embd=8, n_ff=16),
                          decoder=LlamaConfig(vocab_size=tok.vocab_size, block_size=24, n_layer=1, n_head=2, n_embd=8)))
    ids = torch.tensor([prompt(tok, "zh") + tok.encode("左边是 3") + [tok.eos_id]])
    images = torch.rand(1, 1, 8, 8)
    a = captioner_loss(model, (images, ids))
    b = captioner_loss(model, (images, torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)))
    if not torch.allclose(a, b, atol=1e-6):
        raise RuntimeError("padding changes the captioner's loss")
    text = caption(model, images, tok, 4, prompt=prompt(tok, "zh"))[0]
    return f"captioner ok (loss {a.item():.2f} nats, padding ignored; untrained caption {text!r})"


COMMANDS = {
    "data": Command(data, SceneRun, "the data card: scenes, source digit images per split, caption lengths",
                    examples=("llmpath vlm data", "llmpath vlm data --kind=shapes"), presets=SCENE_PRESETS),
    "clip": Command(clip, CLIPRun, "CLIP: contrastive pretraining of the ViT against a text encoder",
                    examples=("llmpath vlm clip",), presets=CLIP_PRESETS),
    "lm": Command(lm, CaptionLMRun, "the decoder alone: a language model of the captions in both languages",
                  examples=("llmpath vlm lm",), presets=LM_PRESETS),
    "caption": Command(caption_cmd, CaptionRun, "the LLaVA-style captioner: ViT -> projector -> decoder",
                       examples=("llmpath vlm caption", "llmpath vlm caption --vision=scratch",
                                 "llmpath vlm caption --decoder=trained "
                                 "--init_from=runs/vlm/small-caption-clip-frozen"), presets=CAPTION_PRESETS),
    "compare": Command(compare_cmd, CompareRun, "CLIP, the caption LM and five captioners; one table",
                       examples=("llmpath vlm compare --workers=2",), presets=COMPARE_PRESETS),
    "describe": Command(describe, DescribeRun, "caption test scenes with a trained captioner; where each word looks",
                        examples=("llmpath vlm describe --num_beams=3",), presets=CAPTION_PRESETS),
}
PRESETS = CAPTION_PRESETS
