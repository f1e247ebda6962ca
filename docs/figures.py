"""The tutorials' figures (`make docs-figures`): idea diagrams drawn anew, result figures copied from runs.

llmpath never writes into the repository by itself: a run draws its figures into runs/<topic>/<name>/figures/,
and this script copies the ones the tutorials show, under the names the tutorials use. Run the tour (or the
commands below) first; a figure whose run is missing is listed and skipped. Idea diagrams (an unrolled RNN,
a causal mask) need no training: DIAGRAMS names the library function that draws each one.

    python docs/figures.py                 # diagrams, then the run figures from runs/
    python docs/figures.py --runs=/tmp/runs --dry-run
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent / "tutorials" / "figures"

# tutorial figure name -> (figure in the run folder, the command that draws it)
FIGURES: dict[str, tuple[str, str]] = {
    "01_decision_boundary.png": ("mlp/small/figures/decision_boundary.png", "llmpath mlp train"),
    "01_activations.png": ("mlp/small/figures/activations.png", "llmpath mlp train"),
    "01_optimizers.png": ("mlp/small/figures/optimizers.png", "llmpath mlp train"),
    "01_confusion_tweets.png": ("mlp/small/figures/confusion_tweets.png", "llmpath mlp train"),
    "01_confusion_chinese-reviews.png": ("mlp/small/figures/confusion_chinese-reviews.png", "llmpath mlp train"),
    "01_curves_tweets.png": ("mlp/small/figures/curves_tweets.png", "llmpath mlp train"),
    "02_val_curves.png": ("rnn/small-compare/figures/val_curves.png", "llmpath rnn figures"),
    "02_base_val_curves.png": ("rnn/base-compare/figures/val_curves.png", "llmpath rnn compare --preset=base --workers=2"),
    "02_vanishing_gradients.png": ("rnn/small-compare/figures/vanishing_gradients.png", "llmpath rnn figures"),
    "02_exploding_gradients.png": ("rnn/small-compare/figures/exploding_gradients.png", "llmpath rnn figures"),
    "02_lstm_gates.png": ("rnn/small-compare/figures/lstm_gates.png", "llmpath rnn figures"),
    "02_lstm_unit.png": ("rnn/small-compare/figures/lstm_unit.png", "llmpath rnn figures"),
    "03_alignment_bahdanau.png": ("seq2seq/small-bahdanau/figures/alignment.png", "llmpath seq2seq compare && llmpath seq2seq figures"),
    "03_alignment_general.png": ("seq2seq/small-general/figures/alignment.png", "llmpath seq2seq compare && llmpath seq2seq figures"),
    "04_positional_encoding.png": ("transformer/small/figures/positional_encoding.png", "llmpath transformer figures"),
    "04_structure.png": ("transformer/small/figures/structure.png", "llmpath transformer figures"),
    "04_attn_encoder.png": ("transformer/small/figures/attn_encoder.png", "llmpath transformer figures"),
    "04_attn_decoder_self.png": ("transformer/small/figures/attn_decoder_self.png", "llmpath transformer figures"),
    "04_attn_cross.png": ("transformer/small/figures/attn_cross.png", "llmpath transformer figures"),
    "05_gpt_small_curves.png": ("gpt/small/figures/curves.png", "llmpath gpt train"),
    "06_small_curves.png": ("bert/small/figures/curves.png", "llmpath bert train"),
    "06_attention.png": ("bert/small/figures/attention.png", "llmpath bert figures"),
    "06_cls_pca_chinese-reviews.png": ("bert/small/figures/cls_pca_chinese-reviews.png",
                                       "llmpath bert compare && llmpath bert figures"),
    "07_position_similarity.png": ("vit/small-mnist-5k-vit/figures/position_similarity.png",
                                   "llmpath vit compare && llmpath vit figures"),
    "07_rollout.png": ("vit/small-mnist-5k-vit/figures/rollout.png", "llmpath vit compare && llmpath vit figures"),
    "07_cnn_filters.png": ("vit/small-mnist-5k-vit/figures/cnn_filters.png", "llmpath vit compare && llmpath vit figures"),
    "07_misclassified.png": ("vit/small-mnist-5k-vit/figures/misclassified.png",
                             "llmpath vit compare && llmpath vit figures"),
    "07_confusion_vit.png": ("vit/small-mnist-5k-vit/figures/confusion_vit.png",
                             "llmpath vit compare && llmpath vit figures"),
    "07_learning_curve.png": ("vit/small-curve/figures/learning_curve.png", "llmpath vit curve"),
    "08_pca_en.png": ("word2vec/small/figures/pca_en.png", "llmpath word2vec train && llmpath word2vec figures"),
    "08_pca_zh.png": ("word2vec/small/figures/pca_zh.png",
                      "llmpath word2vec train --corpus=chinese-words --name=small-zh && llmpath word2vec figures"),
    "08_static_vs_contextual.png": ("word2vec/small/figures/static_vs_contextual.png",
                                    "llmpath bert train && llmpath word2vec figures"),
    "09_curves_llama.png": ("llama/small-llama/figures/curves.png", "llmpath llama compare --workers=2"),
    "09_attention_rope_vs_learned.png": ("llama/small-compare/figures/attention_rope_vs_learned.png",
                                         "llmpath llama compare --workers=2 && llmpath llama figures"),
    "09_expert_usage_pooled.png": ("llama/small-compare/figures/expert_usage_pooled.png",
                                   "llmpath llama compare --pooled --workers=2 && llmpath llama figures"),
    "09_expert_usage.png": ("llama/small-compare/figures/expert_usage.png",
                            "llmpath llama compare --workers=2 && llmpath llama figures"),
    "10_quant_error.png": ("efficient/small-figures/figures/quant_error.png",
                           "llmpath gpt train && llmpath efficient figures"),
    "10_quant_grid_gpt.png": ("efficient/small-figures/figures/quant_grid_gpt.png",
                              "llmpath gpt train && llmpath efficient figures"),
    "10_temperature_gpt.png": ("efficient/small-figures/figures/temperature_gpt.png",
                               "llmpath gpt train && llmpath efficient figures"),
    "13_scenes.png": ("vlm/small-compare/figures/scenes.png", "llmpath vlm compare --workers=2"),
    "13_attention.png": ("vlm/small-compare/figures/attention.png", "llmpath vlm compare --workers=2"),
    "13_retrieval.png": ("vlm/small-clip/figures/retrieval.png", "llmpath vlm clip"),
}


# tutorial figure name -> "module:function" returning a matplotlib Figure (no training, no data needed)
DIAGRAMS: dict[str, str] = {
    # chapter 1
    "01_computation_graph.png": "llmpath.mlp.diagrams:computation_graph",

    # chapter 2
    "02_unrolled_rnn.png": "llmpath.rnn.diagrams:unrolled_rnn_figure",
    "02_lstm_cell.png": "llmpath.rnn.diagrams:lstm_cell_figure",

    # chapter 3
    "03_attention_step.png": "llmpath.seq2seq.diagrams:attention_figure",

    # chapter 4
    "04_attention_kinds.png": "llmpath.transformer.diagrams:attention_kinds_figure",
    "04_ln_placement.png": "llmpath.transformer.diagrams:ln_placement_figure",

    # chapter 5a
    "05a_bpe_merges.png": "llmpath.tokenizers.diagrams:merge_figure",

    # chapter 5
    "05_causal_mask.png": "llmpath.gpt.diagrams:causal_mask_figure",

    # chapter 6
    "06_bidirectional_vs_causal.png": "llmpath.bert.diagrams:bidirectional_vs_causal_figure",
    "06_masking.png": "llmpath.bert.diagrams:masking_figure",

    # chapter 7
    "07_patches.png": "llmpath.vit.figures:patches_figure",
    "07_sincos_similarity.png": "llmpath.vit.figures:sincos_similarity_figure",

    # chapter 9
    "09_rope.png": "llmpath.llama.figures:rope_frequencies_figure",
    "09_kv_cache.png": "llmpath.llama.figures:kv_cache_figure",

    # chapter 10
    "10_lora.png": "llmpath.efficient.figures:lora_figure",
    "10_quant_grid.png": "llmpath.efficient.figures:quant_grid_figure",
    "10_kl_direction.png": "llmpath.efficient.figures:kl_direction_figure",

    # chapter 11
    "11_template_mask.png": "llmpath.chat.figures:template_mask_figure",
    "11_packing.png": "llmpath.chat.figures:packing_figure",

    # chapter 12
    "12_rlhf_loop.png": "llmpath.chat.figures:rlhf_loop_figure",
    "12_kl_estimators.png": "llmpath.chat.figures:kl_estimators_figure",
    "12_gae.png": "llmpath.chat.figures:gae_figure",

    # chapter 13
    "13_clip_matrix.png": "llmpath.vlm.figures:clip_matrix_figure",
    "13_prefix_vs_cross.png": "llmpath.vlm.figures:prefix_vs_cross_figure",
}


def draw_diagrams(docs: Path = DOCS, dry_run: bool = False) -> list[str]:
    """Draw every idea diagram into docs/ (the figure names, in order)."""
    import importlib

    from llmpath.plotting import save_fig

    for name, target in DIAGRAMS.items():
        mod, fn = target.split(":")
        if not dry_run:
            save_fig(getattr(importlib.import_module(mod), fn)(), docs / name)
    return list(DIAGRAMS)


def copy_figures(runs: Path, docs: Path = DOCS, dry_run: bool = False) -> tuple[list[str], list[str]]:
    """(copied, missing) tutorial figure names."""
    copied, missing = [], []
    for name, (src, command) in FIGURES.items():
        path = runs / src
        if not path.exists():
            missing.append(f"{name}: no {path} (draw it with `{command}`)")
            continue
        if not dry_run:
            docs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, docs / name)
        copied.append(name)
    return copied, missing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs", help="the runs folder to copy from (default: runs)")
    p.add_argument("--dry-run", action="store_true", help="list what would be copied, copy nothing")
    args = p.parse_args(argv)
    drawn = draw_diagrams(dry_run=args.dry_run)
    copied, missing = copy_figures(Path(args.runs), dry_run=args.dry_run)
    print(f"{'would draw' if args.dry_run else 'drew'} {len(drawn)} diagram(s) and "
          f"{'would copy' if args.dry_run else 'copied'} {len(copied)} run figure(s) into {DOCS}")
    for m in missing:
        print("  skipped " + m)
    return 0


if __name__ == "__main__":
    sys.exit(main())
