"""The preprocess folder: frozen encoders embed the patches, and feature_set owns what is written (EmbeddingSpec, FeatureSet, slide HDF5)."""
