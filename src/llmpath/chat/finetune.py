"""Instruction tuning runs: the base model finetuned on the chat examples, and the per-task comparison.

    cfg = build_config(SFTRun, ["--preset=small"], SFT_PRESETS)   # starts from runs/chat/small (the base model)
    summary = run_sft(cfg)               # runs/chat/small-sft: response loss before/after, scores per task
    rows = compare(cfg, workers=2)       # base few-shot vs SFT vs SFT without loss masking, task by task

`run_sft` loads the base run (`--init_from`, default <out>/chat/<preset>), builds the instruction examples
(llmpath.chat.data), and trains with sft.py's loss through the shared `fit`; its val loss is the response loss on
the val conversations, and the best checkpoint is kept. At the end the model answers the test prompts
(evaluate.py) and its summary holds the scores, how answers end, and a few transcripts. The same command with
--mask_everything=true trains on every token (the ablation), in <preset>-sft-nomask.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from llmpath.chat.base import PRESETS as BASE_PRESETS
from llmpath.chat.base import TOPIC, BaseRun
from llmpath.chat.data import TASKS, build_examples, data_card
from llmpath.chat.evaluate import METRIC_NAMES, SCORED, answerable, evaluate, first_per_task, main_number
from llmpath.chat.sft import SFTBatches, response_loss, sft_loss
from llmpath.chat.template import CHAT_TOKENS
from llmpath.common import count_params, log, map_processes, markdown_table, setup_logging
from llmpath.config import ConfigError, opt
from llmpath.plotting import save_fig, training_curves
from llmpath.runs import comparable_config, load_run, reuse, start_run, sub_config
from llmpath.train import fit, read_metrics


@dataclass
class SFTRun(BaseRun):
    """A base run finetuned on the instruction examples. The model's shape is the base run's."""

    max_per_task: int = opt(2000, "train examples per task at most", min=1)
    max_eval: int = opt(200, "val and test examples per task at most", min=1)
    val_items: int = opt(50, "val conversations per task scored at each evaluation (response loss)", min=1)
    eval_items: int = opt(50, "test prompts per task the model answers at the end (greedy)", min=1)
    max_new_tokens: int = opt(48, "tokens an answer may take at most", min=1)
    pack: bool = opt(False, "lay several conversations in one row (else one per row, padded)")
    mask_everything: bool = opt(False, "the ablation: learn every token, prompts included, not only the answers")
    n_shots: int = opt(3, "solved examples shown to the base model before each test prompt (compare)", min=0)
    tasks: str = opt("", "comma-separated tasks to train and test on (empty: all: " + ", ".join(TASKS) + ")")

    def check(self) -> None:
        super().check()
        if unknown := [t for t in self.task_list() if t not in TASKS]:
            raise ConfigError(f"--tasks: unknown task '{unknown[0]}'; choose from: {', '.join(TASKS)}")

    def task_list(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.tasks.split(",") if t.strip()) or tuple(TASKS)

    def base_path(self) -> Path:
        """The base run this finetunes: --init_from, or <out>/chat/<preset>."""
        return Path(self.init_from or Path(self.out) / TOPIC / (self.preset or "small"))

    def default_name(self) -> str:
        return f"{self.preset or 'custom'}-sft" + ("-nomask" if self.mask_everything else "") + \
            ("-pack" if self.pack else "")

    def resolved(self) -> "SFTRun":
        """Checked, and named after its options when no --name was given: a run beside the one it starts from,
        never in its folder."""
        self.check()
        return replace(self, name=self.default_name()) if self.name in ("", self.preset or "default") else self

    def shaped_like(self, model, cfg) -> "SFTRun":
        """This config with the model shape, vocabulary and mixture of the run it starts from (model, its config)."""
        return replace(self, model=replace(model.cfg), bpe_vocab_size=cfg.bpe_vocab_size, weights=cfg.weights)


# The SFT recipe per base preset: the base's shape comes from its run; these set the data and the schedule.
# Learning rate 2e-3 (two fifths of pretraining's): the model should learn the format without forgetting the languages.
_SFT = {"train.lr": 2e-3, "train.warmup_steps": 20, "train.schedule": "cosine", "train.min_lr_ratio": 0.1}
SFT_PRESETS: dict[str, dict] = {
    "tiny": {**BASE_PRESETS["tiny"], **_SFT, "train.max_steps": 20, "train.batch_size": 8, "train.eval_interval": 10,
             "max_per_task": 40, "max_eval": 8, "val_items": 4, "eval_items": 4, "max_new_tokens": 8},
    **{name: {**BASE_PRESETS[name], **_SFT, **steps} for name, steps in {
        "small": {"train.max_steps": 200, "train.batch_size": 16, "train.eval_interval": 100, "max_eval": 100},
        "base": {"train.max_steps": 1000, "train.batch_size": 16, "train.eval_interval": 250},
    }.items() if name in BASE_PRESETS},
}


def load_base(cfg: SFTRun, dropout: float | None = None):
    """(model, tokenizer, config) of the base run, checked to carry the chat template's tokens."""
    hint = f"llmpath chat pretrain --preset={cfg.preset or 'small'}"
    model, tok, base_cfg = load_run(cfg.base_path(), hint=hint, topic=TOPIC, dropout=dropout)
    if missing := [s for s in CHAT_TOKENS if s not in getattr(tok, "special_tokens", {})]:
        raise ConfigError(f"{cfg.base_path()}'s tokenizer has no {missing[0]} token; train the base model with "
                          f"`{hint}`")
    return model, tok, base_cfg


def eval_examples(cfg: SFTRun) -> dict[str, list]:
    """The instruction examples of cfg (train capped by max_per_task, val/test by max_eval)."""
    return build_examples(cfg.seed, cfg.max_per_task, cfg.max_eval, tasks=cfg.task_list())


def test_items(cfg: SFTRun, tok, block_size: int, examples: dict | None = None) -> list:
    """The test conversations every column is asked: the first eval_items per task that fit the context."""
    return answerable(tok, (examples or eval_examples(cfg))["test"], block_size, cfg.eval_items)


def run_sft(cfg: SFTRun) -> dict:
    """Finetune the base run on the instruction examples (or reuse the finished run); the run's summary."""
    setup_logging()
    cfg = cfg.resolved()
    if (done := reuse(cfg, TOPIC)) is not None:
        return done
    key = comparable_config(cfg)
    model, tok, base_cfg = load_base(cfg, dropout=cfg.model.dropout)
    cfg = cfg.shaped_like(model, base_cfg)
    ex = eval_examples(cfg)
    block = model.cfg.block_size
    val, test = first_per_task(ex["val"], cfg.val_items), test_items(cfg, tok, block, ex)
    batches = SFTBatches(tok, ex["train"], cfg.train.batch_size, block, pack=cfg.pack,
                         mask_everything=cfg.mask_everything, seed=cfg.seed)
    before = {"response_loss": response_loss(model, test, tok)}
    run = start_run(cfg, TOPIC, tokenizer=tok, key=key)
    log.info(f"SFT of {cfg.base_path()} ({count_params(model):,} parameters): {len(ex['train']):,} train examples "
             f"in {len(batches.rows):,} rows, {'every token' if cfg.mask_everything else 'answers only'} -> {run.path}")
    res = fit(model, sft_loss, batches, cfg.train, run=run, unit="samples", restore_best=True,
              evaluate=lambda m: {"val_loss": response_loss(m, val, tok)})
    title = f"SFT（{cfg.preset or '自定义'}）" + ("：不掩码" if cfg.mask_everything else "")
    curves = save_fig(training_curves(read_metrics(run.path / "metrics.jsonl"), title), run.figures / "curves.png")
    report = evaluate(model, tok, test, per_task=cfg.eval_items, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    summary = {"base": str(cfg.base_path()), "params": count_params(model), "steps": res.step,
               "val_loss": res.best, "train_loss": res.train_loss, "seconds": round(res.seconds, 1),
               "examples": data_card(ex), "train_rows": len(batches.rows),
               "before": before, "response_loss": response_loss(model, test, tok), **report, "figures": [curves]}
    summary = run.finish(summary)
    log.info(f"response loss {before['response_loss']:.3f} -> {summary['response_loss']:.3f} nats/token; "
             f"{summary['ended']:.0f}% of answers end with <|im_end|>; {res.step} steps in {res.seconds:.0f} s")
    return summary


def base_report(cfg: SFTRun) -> dict:
    """The base model on the same test prompts, shown cfg.n_shots solved train examples of each task first."""
    setup_logging()
    model, tok, _ = load_base(cfg)
    ex = eval_examples(cfg)
    test = test_items(cfg, tok, model.cfg.block_size, ex)
    report = evaluate(model, tok, test, per_task=cfg.eval_items, max_new_tokens=cfg.max_new_tokens,
                      shots=ex["train"], n_shots=cfg.n_shots, seed=cfg.seed)
    return {**report, "response_loss": response_loss(model, test, tok), "n_shots": cfg.n_shots}


# ---------------------------------------------------------------------------------------------- compare

def _job(job: tuple[str, SFTRun]) -> dict:
    """One column of the comparison (module level, so that columns can run in parallel processes)."""
    kind, cfg = job
    if kind == "baselines":  # the earlier stages' models on the same test items (their runs, where they exist)
        from llmpath.chat.baselines import task_model_scores

        setup_logging()
        model, tok, _ = load_base(cfg)  # the chat models' tokenizer and context decide which items they answer
        return task_model_scores(test_items(cfg, tok, model.cfg.block_size), out=cfg.out,
                                 preset=cfg.preset or "small")
    return base_report(cfg) if kind == "base" else run_sft(cfg)


def compare_jobs(cfg: SFTRun) -> dict[str, tuple[str, SFTRun]]:
    """The columns: SFT, SFT without loss masking (each its own run folder), the base model few-shot, and the
    earlier stages' task-specific models."""
    plain = replace(sub_config(cfg, SFTRun), name="")  # an SFTRun (load_run rebuilds it); named after its options
    return {"sft": ("sft", replace(plain, mask_everything=False)),
            "nomask": ("sft", replace(plain, mask_everything=True)),
            "base": ("base", plain), "baselines": ("baselines", plain)}


def compare(cfg: SFTRun, workers: int = 1) -> dict[str, dict]:
    """{"base": few-shot report, "sft": SFT run summary, "nomask": the ablation's, "baselines": the earlier
    stages' models (llmpath.chat.baselines)}, computed side by side (the two trainings first)."""
    load_base(cfg)  # a missing base run is one line here, before any worker process starts
    jobs = compare_jobs(cfg)
    return dict(zip(jobs, map_processes(_job, list(jobs.values()), workers)))


COLUMNS = {"base": "基座（{n} 例提示）", "sft": "SFT", "nomask": "SFT（不掩码）"}
SECONDARY = {"idiom-chain": ("follows", "首字接对 %"), "arithmetic": ("number", "答出一个数 %")}


def _fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def compare_table(done: dict[str, dict], baselines: dict[str, dict] | None = None) -> str:
    """Per task: the main number of every column (and of the course's task-specific model, where one exists)."""
    cols = [c for c in COLUMNS if c in done]
    head = ["任务", "指标", *(COLUMNS[c].format(n=done[c].get("n_shots", 0)) for c in cols)]
    if baselines:
        head.append("前几章的专用模型")
    rows = []
    for task, (label, _) in TASKS.items():
        metric = SCORED.get(task)
        row = [label, METRIC_NAMES[metric] if metric else "回答损失（nats/token）↓"]
        row += [_fmt(main_number(task, done[c]["tasks"].get(task)), 1 if metric else 3) for c in cols]
        if baselines:  # task -> [{"model", "score", ...}] (llmpath.chat.baselines); a missing run shows "—"
            found = [f"{_fmt(main_number(task, b['score']))}（{b['model']}）" for b in baselines.get(task, [])
                     if b.get("score")]
            row.append("；".join(found) or "—")
        rows.append(row)
        if task in SECONDARY:  # a weaker skill than the main number: the rule or the format, right or wrong
            key, name = SECONDARY[task]
            rows.append([label, name, *(_fmt((done[c]["tasks"].get(task) or {}).get(key)) for c in cols)] +
                        (["—"] if baselines else []))
    extra = [("全部任务", "回答损失（nats/token）↓", "response_loss", 3),
             ("回答的结尾", "以 <|im_end|> 结束 %", "ended", 0),
             ("回答的结尾", "写出角色标记 %", "role_tokens", 0)]
    for label, metric, key, digits in extra:
        rows.append([label, metric, *(_fmt(done[c][key], digits) for c in cols)] + (["—"] if baselines else []))
    return markdown_table(head, rows, "ll" + "r" * (len(head) - 2))


__all__ = ["SFTRun", "SFT_PRESETS", "TASKS", "run_sft", "base_report", "load_base", "first_per_task", "compare",
           "compare_table"]
