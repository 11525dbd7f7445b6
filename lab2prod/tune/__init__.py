"""lab2prod tune: Optuna studies whose trials are DVC experiments (study.py runs them, report.py shows them)."""
