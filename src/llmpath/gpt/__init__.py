"""Stage 5: GPT — pretraining, sampling, KV cache, Hugging Face interop, DDP and downstream finetuning.

Reading order: model.py (the GPT-2 architecture, KVCache) -> generate.py (decoding) -> hf.py (weights to
and from transformers) -> finetune.py (objectives and the classification head) -> cli.py (commands).
"""
