"""What a user watches: metrics.jsonl, tensorboard events, a progress bar and PNG curves.

Only process 0 writes (other processes get a writer that does nothing), so a multi-host run
produces one set of logs. Every line of `logs/metrics.jsonl` is a JSON object with at least
`step`; training lines carry `loss`, evaluation lines prefix their keys with `eval/`.
A resumed run appends to the same files.

Speed accounting (the anchors' convention):

    MFU = (6·N + 6·L·d·S) · tokens/s ÷ (devices · peak FLOP/s)

with N the parameters (a tied head counted once), L layers, d width, S sequence length
(causal attention counted as half of full attention, hence 6 rather than 12).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Mapping

import jax


def flops_per_token(num_params: int, num_layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls plus 6·L·d·S for causal attention."""
    return 6.0 * num_params + 6.0 * num_layers * hidden * seq_len


# What the progress bar shows of each training line and evaluation (`eval_` keys), those a
# phase logs: a GRPO or PPO loss is near 0 by design, its reward and KL say how it goes.
HEADLINE = ("loss", "reward", "kl")


class MetricsWriter:
    """The run's logs. `resume_step`: the checkpoint the run continues from (None: it starts at
    step 0). What an earlier attempt logged after it is dropped — from metrics.jsonl by
    `resume`, from TensorBoard by the purge step of the new events file (events of steps ≥
    `resume_step + 1`, or of every step for a fresh start, are discarded by its readers)."""

    def __init__(self, workdir: str | Path, *, total_steps: int, progress_bar: bool = True,
                 enabled: bool | None = None, resume_step: int | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self._bar = None
        self._postfix: dict[str, str] = {}
        if not self.enabled:
            return
        self.logdir = Path(workdir) / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.logdir / "metrics.jsonl", "a", encoding="utf-8")
        from tensorboardX import SummaryWriter  # imported lazily: heavy, and process 0 only

        # A NaN metric is the run's own one-line error (`loop.DivergenceGuard`), not a log
        # line of tensorboardX's on the terminal.
        logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)

        self._tb = SummaryWriter(str(self.logdir),
                                 purge_step=0 if resume_step is None else resume_step + 1)
        if progress_bar:
            from tqdm.auto import tqdm

            # A resumed run's bar starts at its checkpoint: its rate counts this run's steps.
            self._bar = tqdm(total=total_steps, initial=max(resume_step or 0, 0),
                             dynamic_ncols=True, leave=True)

    def write(self, step: int, metrics: Mapping[str, float], prefix: str = "") -> None:
        """Log scalar metrics of `step` (keys get `prefix`, e.g. "eval/")."""
        if not self.enabled:
            return
        row = {"step": int(step)}
        for key, value in metrics.items():
            value = float(value)
            name = f"{prefix}{key}"
            row[name] = value if math.isfinite(value) else str(value)
            self.history[name].append((int(step), value))
            self._tb.add_scalar(name, value, int(step))
        row["time"] = time.time()
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._bar is not None and prefix in ("", "eval/"):
            shown = {("eval_" if prefix else "") + k: f"{float(metrics[k]):.4f}"
                     for k in HEADLINE if k in metrics}
            if shown:
                self._postfix.update(shown)
                self._bar.set_postfix(self._postfix, refresh=False)

    def write_text(self, step: int, tag: str, text: str) -> None:
        """Free text (e.g. sample completions) into tensorboard and a samples log."""
        if not self.enabled:
            return
        self._tb.add_text(tag, text, int(step))
        with open(self.logdir / "samples.txt", "a", encoding="utf-8") as f:
            f.write(f"--- step {step} · {tag}\n{text}\n")

    def status(self, text: str) -> None:
        """Words before the bar while no step is counted ("first step (compiles)"); "" clears."""
        if self._bar is not None:
            self._bar.set_description_str(text)

    def advance(self, step: int) -> None:
        if self._bar is not None:
            self._bar.n = int(step)
            self._bar.refresh()

    def plot(self, plot_dir: str | Path) -> list[Path]:
        """One PNG per metric family (train and eval curves of the same name together)."""
        if not self.enabled or not self.history:
            return []
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plot_dir = Path(plot_dir)
        plot_dir.mkdir(parents=True, exist_ok=True)
        families: dict[str, list[str]] = defaultdict(list)
        for name in self.history:
            families[name.split("/")[-1]].append(name)
        written = []
        for family, names in sorted(families.items()):
            fig, ax = plt.subplots(figsize=(6, 3.5))
            for name in sorted(names):
                steps, values = zip(*self.history[name])
                ax.plot(steps, values, label=name, marker="." if len(steps) < 30 else None)
            ax.set_xlabel("step")
            ax.set_title(family)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = plot_dir / f"{family.replace('/', '_')}.png"
            fig.savefig(path, dpi=90)
            plt.close(fig)
            written.append(path)
        return written

    def resume(self, step: int) -> None:
        """Continue a killed run: drop lines logged after `step` (they will be logged again by
        the resumed run) and a line torn by the kill, and reload the rest, so curves cover the
        whole history. The file is rewritten through a temporary sibling and a rename. Step −1:
        a run killed before its first checkpoint starts again, and every line goes."""
        path = self.logdir / "metrics.jsonl" if self.enabled else None
        if path is None or not path.exists():
            return
        self._jsonl.close()
        rows = []
        # "\n" only: str.splitlines also splits inside a JSON string at U+2028, U+0085, …
        for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by the kill (only the last one can be): logged again
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                rows.append(row)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        os.replace(tmp, path)
        self._jsonl = open(path, "a", encoding="utf-8")
        self.history.clear()
        for row in rows:
            for key, value in row.items():
                if key not in ("step", "time") and isinstance(value, (int, float)):
                    self.history[key].append((row["step"], float(value)))

    def note(self, text: str) -> None:
        """Print a line above the progress bar (a plain print inside it would share its line)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        self._tb.close()
        self._jsonl.close()
