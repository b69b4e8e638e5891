"""Progress bars that are live while a loop runs and leave nothing broken in a saved notebook.

In a notebook, ``tqdm.auto`` draws an ipywidgets bar. With ``leave=False`` tqdm hides the widget when the
loop ends, but the cell output still points at the widget's model: a notebook saved without widget state
(JupyterLab's default, nbgrader feedback) shows "Error displaying widget: model not found" when reopened.

:func:`progress_bar` displays the same widget under a display id and, when the bar closes, replaces that
output with plain text: nothing after a finished loop, the last bar state after an interrupted one (tqdm
closes a bar when its loop ends, breaks or raises). Outside a notebook it is ``tqdm.auto``'s terminal bar.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any


def progress_bar(iterable: Iterable, *, desc: str, disable: bool = False) -> Iterable:
    """Wrap ``iterable`` in a transient progress bar (``leave=False``).

    Args:
        iterable: What to iterate over (a DataLoader, a list...).
        desc: The label in front of the bar.
        disable: No bar at all (the iterable is still wrapped).

    Returns:
        A tqdm bar that iterates over ``iterable``; in a notebook, one whose output is plain text once
        it is closed.

    Used in: every notebook that trains, evaluates or extracts features (through ``train`` and ``features``)
    """
    from tqdm.auto import tqdm
    from tqdm.std import tqdm as terminal_tqdm

    if disable or not _in_notebook(tqdm):
        # tqdm.auto's terminal bar calls iter() on construction and again when looped over: a DataLoader
        # would draw from its generator (and start its workers) twice per epoch. tqdm.std calls it once.
        return terminal_tqdm(iterable, desc=desc, leave=False, disable=disable)
    return _notebook_bar_class()(iterable, desc=desc, leave=False)


def _in_notebook(auto_tqdm: type) -> bool:
    """Whether ``tqdm.auto`` chose the widget bar (a Jupyter kernel with ipywidgets)."""
    from tqdm.notebook import tqdm as notebook_tqdm

    return issubclass(auto_tqdm, notebook_tqdm)


@functools.cache
def _notebook_bar_class() -> type:
    """The widget bar whose output becomes plain text on close (defined on first use: imports IPython)."""
    from IPython.display import display
    from tqdm.notebook import tqdm as notebook_tqdm

    class TransientNotebookBar(notebook_tqdm):
        """tqdm's widget bar, displayed under a display id that :meth:`close` overwrites with text."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, display=False, **kwargs)
            self._handle = display(self.container, display_id=True)
            self.displayed = True

        def close(self) -> None:
            super().close()
            handle, self._handle = getattr(self, "_handle", None), None
            if handle is not None:
                finished = not self.total or self.n >= self.total
                text = "" if finished else self.format_meter(**self.format_dict)
                handle.update({"text/plain": text}, raw=True)

    return TransientNotebookBar
