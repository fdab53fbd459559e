"""hf_animals: a folder of labelled images -> a complete, reproducible transfer-learning study.

Importing the package registers the project's from-scratch CNN (`animals_cnn5`) with timm, so
`timm.create_model("animals_cnn5")` and `timm.create_model("hf-hub:USER/REPO")` of a saved one both work.
"""
from . import cnn  # noqa: F401  (registers animals_cnn5 with timm)
from .errors import UserError  # noqa: F401

__version__ = "0.1.0"
