"""Beam pipelines and their pure cores: a module or subpackage per stage, shared pieces in `pipeline.common`
(see DESIGN.md, "Stages", and README, "Layout")."""

__version__ = "0.1.0"
