"""Stage 9: the modern decoder — a Llama-style model (RMSNorm, RoPE, SwiGLU, GQA) and mixture of experts.

Reading order: model.py (the decoder and its switches) -> moe.py (router, experts, balancing loss) ->
llmpath/generation.py (decoding and the KV cache, shared with GPT) -> hf.py (weights to and from
LlamaForCausalLM / MixtralForCausalLM) -> experiments.py (the ablation) -> cli.py (commands).
"""
