"""ECA in the paper's tabular host: the FT-Transformer of its authors' package on CSV regression (UCI).

Stages: ``preprocess`` (CSV -> split, scaled arrays), ``train`` (FT-Transformer and its ECA variants ×
seeds), ``evaluate`` (MAE / MSE / PCC ± std, paired tests, the PCC-plateau curves).
"""
