"""Stage 3: attention seq2seq translation (Bahdanau and Luong), beam search, BLEU, alignment maps."""
