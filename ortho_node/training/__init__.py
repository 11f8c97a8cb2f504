"""Training, apart from serving: diffusion pretraining, one fit loop for every fine-tuning task, task data,
scores, flags generated from the hyper-parameter dataclasses, and the bundled model's recipe (bundle)."""
