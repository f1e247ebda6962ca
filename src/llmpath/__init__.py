"""llmpath (大模型学习进化之路): from a hand-written MLP to a GPT you pretrain, finetune and align."""

__version__ = "0.1.0"
