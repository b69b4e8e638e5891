"""Progress bars: live widgets while a loop runs, nothing in the saved notebook that needs a widget model.

A synthetic notebook calls the training and feature helpers with progress on, in a real kernel with
ipywidgets. The client below records every output message, so the test sees the live widget being shown
and what is left in the notebook afterwards. A control cell uses plain ``tqdm.auto``: its saved output
does reference a widget model, which proves the kernel really drew widgets.
"""
import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

WIDGET = "application/vnd.jupyter.widget-view+json"
VIEW_TAG = f'<script type="{WIDGET}">'  # how an HTML export embeds a widget output

SETUP = """\
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from course_utils import train
from course_utils.transfer import features

torch.manual_seed(0)
images, labels = torch.randn(12, 3, 8, 8), torch.arange(12) % 3
dataset = TensorDataset(images, labels)
loader = DataLoader(dataset, batch_size=4)
model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
criterion, cpu = nn.CrossEntropyLoss(), torch.device("cpu")
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)"""

HELPERS = """\
print("train", train.train_one_epoch(model, criterion, optimizer, loader, cpu, progress=True)["loss"] > 0)
print("eval", train.evaluate(model, criterion, loader, cpu, progress=True)["acc"] >= 0)
print("predict", tuple(train.predict(model, loader, cpu, progress=True)[0].shape))
print("features", tuple(features.extract_features(model, dataset, batch_size=4, progress=True)[0].shape))"""

INTERRUPTED = """\
class StopsAfterOneBatch:
    def __len__(self):
        return 3

    def __iter__(self):
        yield next(iter(loader))
        raise KeyboardInterrupt("stopped by hand")

train.evaluate(model, criterion, StopsAfterOneBatch(), cpu, progress=True)"""

CONTROL = """\
from tqdm.auto import tqdm
for _ in tqdm(range(3), desc="plain", leave=False):
    pass"""


def widget_outputs(cell):
    return [out for out in cell.get("outputs", []) if WIDGET in out.get("data", {})]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The synthetic notebook executed in a real kernel, saved and read back; plus the live messages."""
    pytest.importorskip("ipywidgets")
    from nbclient import NotebookClient

    class RecordingClient(NotebookClient):
        """Keeps (cell index, message type, mime types) of every output message while cells run."""

        def output(self, outs, msg, display_id, cell_index):
            self.seen.append((cell_index, msg["msg_type"], sorted(msg["content"].get("data", {}))))
            return super().output(outs, msg, display_id, cell_index)

        def _update_display_id(self, display_id, msg):
            if msg["msg_type"] == "update_display_data":
                self.seen.append((self.running, msg["msg_type"], sorted(msg["content"].get("data", {}))))
            return super()._update_display_id(display_id, msg)

        async def async_execute_cell(self, cell, cell_index, *args, **kwargs):
            self.running = cell_index
            return await super().async_execute_cell(cell, cell_index, *args, **kwargs)

    nb = new_notebook(cells=[new_code_cell(SETUP), new_code_cell(HELPERS),
                             new_code_cell(INTERRUPTED, metadata={"tags": ["raises-exception"]}),
                             new_code_cell(CONTROL)])
    client = RecordingClient(nb, timeout=120, kernel_name="python3")
    client.seen = []
    client.execute()
    path = tmp_path_factory.mktemp("progress") / "saved.ipynb"
    nbformat.write(nb, path)
    return nbformat.read(path, as_version=4), client.seen


def test_helpers_show_live_widget_bars(executed):
    _, seen = executed
    shown = [kind for index, kind, mimes in seen if index == 1 and WIDGET in mimes]
    assert shown.count("display_data") == 4, f"one live bar per helper call expected, got {seen}"
    replaced = [mimes for index, kind, mimes in seen if index == 1 and kind == "update_display_data"]
    assert replaced == [["text/plain"]] * 4, "each bar's output should be replaced by plain text on close"


def test_saved_notebook_has_no_widget_outputs_from_course_utils(executed):
    nb, _ = executed
    setup, helpers, interrupted, control = nb.cells
    printed = "".join(o.text for o in helpers.outputs if o.output_type == "stream")
    assert printed == "train True\neval True\npredict (12, 3)\nfeatures (12, 4)\n"
    for cell in (setup, helpers, interrupted):
        assert widget_outputs(cell) == [], json.dumps(cell.outputs, indent=1)[:2000]
    assert len(widget_outputs(control)) == 1, "control: plain tqdm.auto should leave a widget (else vacuous)"


def test_interrupted_bar_leaves_its_last_state_as_text(executed):
    nb, _ = executed
    outputs = nb.cells[2].outputs
    assert outputs[-1].output_type == "error" and outputs[-1].ename == "KeyboardInterrupt"
    texts = [o.data["text/plain"] for o in outputs if o.output_type == "display_data"]
    assert len(texts) == 1 and texts[0].startswith("eval:") and "1/3" in texts[0], texts


def test_finished_bars_leave_empty_text(executed):
    nb, _ = executed
    texts = [o.data.get("text/plain") for o in nb.cells[1].outputs if o.output_type == "display_data"]
    assert texts == [""] * 4


def test_html_export_like_nbgrader_feedback_has_no_widget_views(executed):
    from nbconvert import HTMLExporter

    nb, _ = executed
    without_control = nbformat.from_dict(nb)
    without_control.cells = without_control.cells[:-1]
    html, _ = HTMLExporter().from_notebook_node(without_control)
    assert VIEW_TAG not in html and "train True" in html
    control_html, _ = HTMLExporter().from_notebook_node(nb)
    assert VIEW_TAG in control_html, "the control cell's widget should show up (else the check is vacuous)"


def test_outside_a_notebook_it_is_the_terminal_bar(capsys):
    from tqdm.std import tqdm as terminal_tqdm

    from course_utils.progress import progress_bar

    bar = progress_bar(range(3), desc="terminal")
    assert isinstance(bar, terminal_tqdm) and not bar.leave
    assert list(bar) == [0, 1, 2]
    assert list(progress_bar([4, 5], desc="off", disable=True)) == [4, 5]
