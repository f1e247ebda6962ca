"""Stage 11: your own chat model — a small bilingual base model, then supervised instruction tuning (SFT).

Reading order: data.py (instruction examples built from the course's data, held-out splits by source item,
the pretraining mixture without the held-out items, task scores) -> template.py (the chat template and its
special tokens) -> sft.py (loss on assistant tokens only, handed to the shared fit loop).
"""
