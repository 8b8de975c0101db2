"""Where slides and spatial transcriptomics are read: the layouts (legacy ST, Visium, Visium HD, HEST), slide images, tissue detection and tiling."""
