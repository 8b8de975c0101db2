"""Where the report is written: metrics per fold, paired comparisons, spatial fidelity, .h5ad export and gene maps, diagnostics."""
