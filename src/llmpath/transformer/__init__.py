"""Stage 4: the Transformer encoder-decoder. attention.py is shared by gpt, bert and vit."""
