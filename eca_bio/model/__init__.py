"""Where the model is: the exemplar-guided expression model and ridge probe, the exemplar bank, trained-model files."""
