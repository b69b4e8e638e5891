"""Instructor tools for the course: student versions, grader exports and Colab links. Students never need it.

``python -m course_admin release | validate | nbgrader | otter`` (:mod:`course_admin.cli`):

- :mod:`course_admin.markers`: the ``# BEGIN SOLUTION`` / ``# BEGIN HIDDEN TESTS`` regions of one cell;
- :mod:`course_admin.assignments`: student versions of whole notebooks (``release``) and ``validate``;
- :mod:`course_admin.nbgrader_course`: an nbgrader course folder; :mod:`course_admin.otter_export` with
  :mod:`course_admin.otter_tests`: Otter Assign master notebooks;
- :mod:`course_admin.colab`: the Colab badge and setup cell that open every notebook.

It imports the helpers of ``course_utils`` it needs, never the other way round. Importing it does no work.
"""
