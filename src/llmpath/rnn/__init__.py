"""Stage 2: vanilla RNN, LSTM and GRU from scratch; a character-level Shakespeare language model."""
