"""tunelab: from a base LLM to a task solution, rung by rung, with the cost of each rung measured."""

__version__ = "0.1.0"

# Public API, imported on first use so that `import tunelab` stays light (torch loads only when needed).
_EXPORTS = {
    "load_task": "tunelab.tasks", "Task": "tunelab.tasks", "Example": "tunelab.tasks",
    "load_model": "tunelab.models", "Model": "tunelab.models",
    "Predictor": "tunelab.predictor", "Predictions": "tunelab.predictor", "predict": "tunelab.predictor",
    "load_predictor": "tunelab.predictor", "save_predictor": "tunelab.predictor",
    "PromptConfig": "tunelab.rungs.prompting", "few_shot": "tunelab.rungs.prompting",
    "SearchConfig": "tunelab.rungs.search", "search": "tunelab.rungs.search",
    "TuneConfig": "tunelab.rungs.tuning", "finetune": "tunelab.rungs.tuning",
    "evaluate": "tunelab.measure.evaluate",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tunelab' has no attribute {name!r}")
