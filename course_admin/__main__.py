"""``python -m course_admin release | validate | nbgrader | otter`` (see :mod:`course_admin.cli`)."""
import sys

from course_admin.cli import main

sys.exit(main())
