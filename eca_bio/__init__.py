"""eca_bio: H&E slides (+ spatial transcriptomics) → ViT embeddings → exemplar ECA model → 250-gene expression."""
