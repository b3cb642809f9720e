"""Pure, typed building blocks of the pipeline; the notebooks in `notebooks/` drive them."""
