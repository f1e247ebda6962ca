"""Stage 6: BERT — a bidirectional encoder pretrained with masked language modelling (+ next-sentence prediction).

Reading order: data.py (sentence pairs, masking) -> model.py (the encoder, equal to BertForPreTraining) ->
objectives.py (MLM + NSP losses and metrics) -> hf.py (weights to and from transformers) -> pretrain.py
(the pretraining run) -> finetune.py (classification: pretrained vs scratch) -> cli.py (commands).
The WordPiece tokenizer lives with the other tokenizers: llmpath.tokenizers.wordpiece.
"""
