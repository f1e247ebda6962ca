"""GPT's generation is the shared module's: llmpath.generation (sampling, beam search, KV cache).

Kept so that `from llmpath.gpt.generate import generate` goes on working.
"""

from llmpath.generation import (KVCache, beam_search, crop_prompt, generate, process_logits,  # noqa: F401
                                stream)
