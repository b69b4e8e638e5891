"""The instructor's command line: ``python -m course_admin release | validate | nbgrader | otter``.

Run it from the repository's root (or pass ``--source``); ``python -m course_admin --help`` lists the
commands and ``python -m course_admin <command> --help`` their options.
"""
from __future__ import annotations

import argparse
import sys

from course_admin import assignments, nbgrader_course, otter_export


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_admin",
                                     description="Student versions and grader exports of the course notebooks.")
    commands = parser.add_subparsers(dest="command", required=True)
    release = commands.add_parser("release", help="write student versions of all notebooks")
    release.add_argument("--dest", default="student", help="folder for the student versions")
    validate = commands.add_parser("validate", help="check the exercise cells of all notebooks")
    nbgrader = commands.add_parser("nbgrader", help="lay out an nbgrader course folder: config + source/")
    nbgrader.add_argument("--course", default="nbgrader_course", help="the nbgrader course folder")
    nbgrader.add_argument("names", nargs="*", help="notebooks to include (default: all), e.g. 01_data_loading")
    otter = commands.add_parser("otter", help="write Otter Assign master notebooks for otter-grader 7")
    otter.add_argument("--dest", default="otter", help="folder for the otter master notebooks")
    for command in (release, validate, nbgrader, otter):
        command.add_argument("--source", default="notebooks", help="folder of instructor notebooks")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; 0 when it worked, 1 when ``validate`` found problems, 2 on an error (printed).

    Used in: instructors' release of the coursework (``make student``, README's "Guide for instructors")
    """
    args = _parser().parse_args(argv)
    try:
        if args.command == "release":
            assignments.release(source=args.source, dest=args.dest)
        elif args.command == "nbgrader":
            nbgrader_course.layout(course=args.course, source=args.source, names=args.names)
        elif args.command == "otter":
            otter_export.export(source=args.source, dest=args.dest)
        else:
            problems = [problem for path in assignments.find_notebooks(args.source)
                        for problem in assignments.validate(path)]
            print("\n".join(problems) if problems else "All notebooks have valid exercises.")
            return 1 if problems else 0
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
