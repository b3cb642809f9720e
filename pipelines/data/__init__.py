"""The data: its contract, its profile for the explore report, and the train/holdout split."""
