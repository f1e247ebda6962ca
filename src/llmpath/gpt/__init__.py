"""Stage 5: GPT — pretraining, sampling, KV cache, Hugging Face interop, DDP and downstream finetuning.

Reading order: model.py (the GPT-2 architecture) -> llmpath/generation.py (decoding and the KV cache,
shared by every decoder) -> hf.py (weights to and from transformers) -> finetune.py (objectives and the
classification head) -> cli.py (commands).
"""
