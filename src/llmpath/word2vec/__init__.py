"""Stage 8: word vectors. CBOW and skip-gram with negative sampling (or a full softmax), trained by the shared fit,
evaluated on WordSim-353, SimLex-999 and the Google analogies, and held against gensim; see docs/tutorials/08_word2vec.md."""
