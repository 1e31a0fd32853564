"""Reports for people: evaluate.py (a labeled set through the scoring pipeline → metrics and report),
review.py (the static review page and its labels), promote.py (the promotion gate: candidate against
champion on a holdout) and plots.py (confusion matrix, top losses, reliability, decision curves,
scoring runs over time, image grids; training curves are vehicle_ray/plotting.py's)."""
