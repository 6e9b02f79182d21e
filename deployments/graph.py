"""The default application object, for `serve build deployments.graph:app` and `serve run`.

Importing this module builds the graph from configs/local.yaml (or $MMRAY_CONFIG); pass
another config with `serve run deployments.app:build_app config=configs/x.yaml` instead.
"""
import os

from deployments.app import build_app

app = build_app({"config": os.environ.get("MMRAY_CONFIG", "configs/local.yaml")})
