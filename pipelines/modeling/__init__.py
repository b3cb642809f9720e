"""From a split to evaluated candidates: preprocessing, models, metrics, plots, comparison, MLflow runs."""
