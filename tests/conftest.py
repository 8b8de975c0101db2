"""Suite-wide setup: the test stage registry may be named by pipeline YAMLs (as a user lists their own)."""

import os

os.environ["ECA_STAGES_MODULES"] = ",".join(
    m for m in (os.environ.get("ECA_STAGES_MODULES", ""), "tests.core.stage_fixtures") if m)
