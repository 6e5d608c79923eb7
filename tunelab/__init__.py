"""tunelab: from a base LLM to a task solution, rung by rung, with the cost of each rung measured.

The public API, for use from Python (the `tunelab` command calls the same functions):

    task = tunelab.load_task("vader");  model = tunelab.load_model()
    zero = tunelab.few_shot(model, task);  tunelab.evaluate(zero, task)
    lora = tunelab.finetune(model, task, tunelab.TuneConfig(method="lora"), out_dir="runs/lora")

No exported name is also the name of a tunelab module, so importing any module never shadows a function here.
Everything is imported on first use, so `import tunelab` stays light (torch loads only when needed).
"""

__version__ = "0.1.0"

# exported name -> "module:attribute"
_EXPORTS = {
    # tasks and models
    "load_task": "tunelab.tasks:load_task", "Task": "tunelab.tasks:Task", "Example": "tunelab.tasks:Example",
    "load_model": "tunelab.models:load_model", "Model": "tunelab.models:Model",
    # predictors, whatever rung made them
    "Predictor": "tunelab.predictor:Predictor", "Predictions": "tunelab.predictor:Predictions",
    "predict": "tunelab.predictor:predict", "load_predictor": "tunelab.predictor:load_predictor",
    "save_predictor": "tunelab.predictor:save_predictor",
    # the rungs
    "BaselineConfig": "tunelab.config:BaselineConfig", "fit_baseline": "tunelab.rungs.baseline:fit_baseline",
    "ProbeConfig": "tunelab.config:ProbeConfig", "fit_probe": "tunelab.rungs.probe:fit_probe",
    "PromptConfig": "tunelab.config:PromptConfig", "few_shot": "tunelab.rungs.prompting:few_shot",
    "SearchConfig": "tunelab.config:SearchConfig", "search_prompt": "tunelab.rungs.search:search",
    "TuneConfig": "tunelab.config:TuneConfig", "finetune": "tunelab.rungs.tuning:finetune",
    "DistillConfig": "tunelab.config:DistillConfig", "distill": "tunelab.rungs.distill:distill",
    # measuring
    "evaluate": "tunelab.measure.evaluate:evaluate",
    "BiasConfig": "tunelab.config:BiasConfig", "bias_report": "tunelab.measure.bias:bias_report",
    "LadderConfig": "tunelab.config:LadderConfig", "run_ladder": "tunelab.ladder:run",
    # shipping
    "calibrate": "tunelab.ship.calibration:calibrate", "build_cascade": "tunelab.ship.cascade:build_cascade",
    "export_onnx": "tunelab.ship.export:export_onnx",
    # offline inference and serving
    "BulkConfig": "tunelab.offline.config:BulkConfig", "predict_all": "tunelab.offline.bulk:predict_all",
    "predict_file": "tunelab.offline.bulk:predict_file",
    "ServeConfig": "tunelab.offline.config:ServeConfig", "create_app": "tunelab.offline.serve:create_app",
    "serve": "tunelab.offline.serve:serve",
    # generation
    "ExpandConfig": "tunelab.generation.config:ExpandConfig", "expand": "tunelab.generation.expand:expand",
    "read_concepts": "tunelab.generation.concepts:read_concepts",
    "GeneratorTuneConfig": "tunelab.generation.config:GeneratorTuneConfig",
    "tune_generator": "tunelab.generation.tuning:tune_generator",
    # errors
    "TunelabError": "tunelab.errors:TunelabError", "ConfigError": "tunelab.errors:ConfigError",
    "InputError": "tunelab.errors:InputError", "ModelError": "tunelab.errors:ModelError",
    "TrainingError": "tunelab.errors:TrainingError",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        module, attribute = _EXPORTS[name].split(":")
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'tunelab' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
