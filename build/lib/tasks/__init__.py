"""The pipeline stages, one module each, exactly those in dvc.yaml: `python -m tasks.<stage>`."""
