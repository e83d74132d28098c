"""Beam pipelines and their pure cores, one module per stage (see DESIGN.md, "Stages")."""

__version__ = "0.1.0"
