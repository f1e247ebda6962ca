"""Stage 10: making a trained decoder cheaper: LoRA, weight-only quantization, distillation (see cli.py)."""

from llmpath.efficient.distill import distillation_loss, make_distill_loss
from llmpath.efficient.lora import apply_lora, load_lora, lora_state_dict, merge_lora, trainable_params, unmerge_lora
from llmpath.efficient.quant import QuantLinear, model_bytes, quantize, weight_error

__all__ = ["apply_lora", "merge_lora", "unmerge_lora", "lora_state_dict", "load_lora", "trainable_params",
           "quantize", "QuantLinear", "model_bytes", "weight_error", "distillation_loss", "make_distill_loss"]
