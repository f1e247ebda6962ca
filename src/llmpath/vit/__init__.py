"""Stage 7: the Vision Transformer against a CNN on handwritten digits.

Reading order: data.py (loading, split, augmentation) -> model.py (patches, position encodings, the ViT) ->
cnn.py (the LeNet-style baseline) -> hf.py (weights to and from transformers) -> experiments.py (training,
the comparison, ablations, learning curve) -> figures.py -> cli.py (commands).
"""
