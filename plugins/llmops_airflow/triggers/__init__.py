"""Triggers of the step operators: the deferrable waits, run by the Airflow triggerer."""
