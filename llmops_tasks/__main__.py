"""``python -m llmops_tasks`` is ``llmops``."""

import sys

from llmops_tasks.cli import main

sys.exit(main())
