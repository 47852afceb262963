"""The README's Python example and examples/*.py run as users run them, with real PyTorch on the
CPU, and print what they promise."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

import larder

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
EXAMPLES = os.path.join(REPO, "examples")


def readme_python_blocks():
    """The fenced ```python blocks of README.md's "## Python" section."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = re.search(r"^## Python\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md has a '## Python' section"
    blocks = re.findall(r"^```python\n(.*?)^```", section.group(1), re.S | re.M)
    assert blocks, "the Python section has a ```python example"
    return blocks


def run(args, cwd, timeout=300):
    done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory):
    """examples/sample prepared, as the examples' instructions prepare it."""
    out = str(tmp_path_factory.mktemp("examples") / "sample-store")
    larder.prepare(os.path.join(EXAMPLES, "sample", "config.yaml"), out)
    return out


def test_the_readme_python_example_runs_from_a_checkout(tmp_path):
    # The example uses paths relative to the repository root, where its reader runs it: a
    # folder with examples/ in it stands in for the checkout, and target/ is made by prepare.
    os.symlink(EXAMPLES, tmp_path / "examples")
    script = tmp_path / "readme_example.py"
    script.write_text("\n\n".join(readme_python_blocks()))
    run([str(script)], cwd=tmp_path)
    checkpoint = torch.load(tmp_path / "target" / "ckpt.pt", weights_only=False)
    assert set(checkpoint) == {"model", "data"}
    assert checkpoint["model"] and all(isinstance(t, torch.Tensor) for t in checkpoint["model"].values())
    # The saved data position resumes a loader: three epochs were done.
    resumed = larder.DataLoader(tmp_path / "target" / "sample-store", batch_size=4, seed=42, format="torch")
    resumed.load_state_dict(checkpoint["data"])
    assert resumed.epoch == 3


def test_train_loop_trains_and_resumes(sample_store, tmp_path):
    out = run([os.path.join(EXAMPLES, "train_loop.py"), sample_store], cwd=tmp_path).stdout
    epochs = re.findall(r"^epoch (\d): loss (\d+\.\d+), last bucket \(\d+, \d+\), caption '.*'$", out, re.M)
    assert [e for e, _ in epochs] == ["0", "1", "2"], out
    assert re.search(r"^resumed at epoch 3, \d+ batches per epoch$", out, re.M), out


def test_train_tiny_trains_with_every_helper(sample_store, tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    done = run([os.path.join(EXAMPLES, "train_tiny.py"), sample_store, "--epochs", "2", "--metrics", str(metrics)], cwd=tmp_path)
    out = done.stdout
    assert "Skipped" not in out + done.stderr, "torch is installed: the example must train"
    assert re.search(r"^epoch 0: \d+ steps, mean loss \d+\.\d+, batch size now \d+$", out, re.M), out
    assert re.search(r"^epoch 1: ", out, re.M), out
    # The tuner's warm-up from 1 towards 4 shows in the history it prints.
    assert re.search(r"^batch sizes: 1->2 ", out, re.M), out
    steps = int(re.search(r"^loss \d+\.\d+ -> \d+\.\d+ over 2 epochs; (\d+) steps, \d+ samples$", out, re.M).group(1))
    assert re.search(rf"^metrics: {re.escape(str(metrics))} \({steps} records\)$", out, re.M), out
    assert re.search(r"^done in \d+\.\d s on cpu$", out, re.M), out
    # Without CUDA the prefetcher passes batches through and says so once.
    assert done.stderr.count("CUDA is not available") == 1, done.stderr
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records if "event" not in r] == list(range(1, steps + 1))
    assert records[-1]["event"] == "end"
