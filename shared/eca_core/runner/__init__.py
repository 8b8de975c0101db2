"""The staged-pipeline runner (the ``[pipeline]`` extra): typed configs from YAML and flags, stages with content-keyed resume, the CLI, the runtime and its ranks."""
