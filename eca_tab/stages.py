"""Stage registry of the tabular pipelines (see pipelines/tab_*.yaml)."""

STAGES = {
    "preprocess": "eca_tab.preprocess:STAGE",
    "train": "eca_tab.train:STAGE",
    "evaluate": "eca_tab.evaluate:STAGE",
}
