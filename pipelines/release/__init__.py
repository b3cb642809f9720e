"""From candidates to a served champion: the gate, the registry, promotion and rollback, compilation,
packaging. The one place that writes shared state (the MLflow registry, the BentoML store)."""
