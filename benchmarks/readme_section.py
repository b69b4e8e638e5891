"""Write a benchmark's table into README.md between its markers, with the machine it ran on.

Every benchmark script that feeds the README calls `write_section(name, markdown)`: the text between
`<!-- benchmark:NAME -->` and `<!-- /benchmark:NAME -->` is replaced, and nothing else in the file changes.
`machine_line()` says where the numbers came from: CPU model, cores, threads, load average, torch version
and GPU, so two tables are only compared when they came from the same kind of machine.

Used by: every script in benchmarks/ that writes a README table.
"""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The vector instruction sets that decide CPU speed here: AVX-512 (with bfloat16) or AVX2 only."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown vector units"
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split()) if "flags" in text else set()
    if "avx512f" in flags:
        return "AVX-512" + (" with bfloat16" if "avx512_bf16" in flags else "")
    return "AVX2" if "avx2" in flags else "no AVX2"


def machine_line(*, threads: int) -> str:
    """One line naming CPU, cores, threads, load, torch and GPU; call it when the measurement ends."""
    import torch  # imported here so `--help` stays fast

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"Machine: {cpu_model()} ({cpu_flags()}), {os.cpu_count()} cores, {threads} torch threads, "
            f"load average {load:.1f} at the end, torch {torch.__version__}, {gpu}.")


def write_section(name: str, markdown: str, *, readme: Path = README) -> None:
    """Replace the README text between `<!-- benchmark:NAME -->` and `<!-- /benchmark:NAME -->`.

    Markers indented with spaces (inside a list item) indent every written line the same way, so the
    section stays part of the item.
    """
    start, end = f"<!-- benchmark:{name} -->", f"<!-- /benchmark:{name} -->"
    text = readme.read_text(encoding="utf-8")
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"{readme} needs exactly one '{start}' followed by one '{end}' to write the "
                         f"'{name}' table; add the pair where the table belongs.")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    line_start = head[head.rfind("\n") + 1:]
    indent = line_start if line_start.strip(" ") == "" else ""
    body = "\n".join(indent + line if line.strip() else "" for line in markdown.strip().splitlines())
    readme.write_text(f"{head}{start}\n{body}\n{indent}{end}{tail}", encoding="utf-8")
