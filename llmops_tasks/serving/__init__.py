"""The served model: the MLflow pyfunc a registered version is, how it is logged, its pip pins.

``model.py`` is the pyfunc's own code (logged as a "model from code"), ``flavor.py`` logs it with
the pinned requirements that train and register both use, and ``generation.py`` is the one greedy
generation path that evaluate scores with.
"""
