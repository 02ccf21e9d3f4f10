"""What every step stands on: the command base, configs, settings, errors, data I/O, tracking.

Nothing in ``core`` imports a step, ``text`` or ``local``; importing it is cheap (heavy libraries
are imported inside the functions that need them).
"""
