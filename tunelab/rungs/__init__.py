"""The rungs of the ladder that build a predictor: baselines, prompting (and its search), fine-tuning, distillation.

Each module's entry point returns a `Predictor` (tunelab.predictor); nothing here imports another rung's module
except distillation, which takes a teacher predictor."""
