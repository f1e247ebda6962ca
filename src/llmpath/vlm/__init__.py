"""Stage 13: a tiny vision-language model: captioned digit and shape scenes, CLIP-style pretraining, a LLaVA-style captioner."""
