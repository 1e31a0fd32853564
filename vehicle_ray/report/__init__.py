"""Reports for people: evaluate.py (a labeled set through the scoring pipeline → metrics and report)
and plots.py (training curves, confusion matrix, top losses)."""
