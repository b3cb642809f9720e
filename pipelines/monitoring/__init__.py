"""Watching the served model: the prediction log against the reference of the model that served it
(issue 11). Reads what serving/ writes; serving/ never imports this package (the bento carries
serving/ alone)."""
