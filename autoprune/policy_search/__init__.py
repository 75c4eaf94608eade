"""The search: the space a trial samples, the objective that prunes, recovers and scores it, the
study and its optimisation loop, the plan and warm starts of a new study, reference curves, the
front and the dashboard notes. ``run.run_search`` is the entry point the CLI, the API and workers
share; ``_optimize`` is private to this package."""
