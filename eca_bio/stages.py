"""Stage registry of the bio pipelines (see pipelines/bio_*.yaml)."""

STAGES = {
    "preprocess": "eca_bio.preprocess:STAGE",
    "train": "eca_bio.train:STAGE",
    "evaluate": "eca_bio.evaluate:STAGE",
    "predict": "eca_bio.predict:STAGE",
}
