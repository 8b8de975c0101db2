"""Stage registry of the MSA pipelines (see pipelines/msa_*.yaml)."""

STAGES = {
    "generate": "eca_msa.synthetic:STAGE",
    "preprocess": "eca_msa.preprocess:STAGE",
    "train": "eca_msa.train:STAGE",
    "evaluate": "eca_msa.evaluate:STAGE",
}
