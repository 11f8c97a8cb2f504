"""Model inference: ``Predictor`` (assembled study -> ``StudyPrediction``) and the offline ``infer`` command."""
