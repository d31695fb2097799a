"""posttrain core: recipes, CLI, model loading, the policy trainer, run directories."""

__version__ = "0.1.0"
