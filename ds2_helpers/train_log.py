"""What a training run reports: one metrics row per step, appended to metrics.csv as it happens, and what the
student sees - a tqdm bar in a terminal or notebook, plain lines every `log_every` steps under nohup."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

METRIC_FIELDS = ["step", "epoch", "loss", "lr", "utterances", "audio_seconds", "step_seconds",
                 "audio_seconds_per_second", "padding_fraction", "frames", "rss_gb", "memory_released", "rank",
                 "utterance_ids"]


def metrics_row(*, step: int, epoch: int, loss: float, lr: float, batch, step_seconds: float, window_stride: float,
                rss_gb: float, released: bool, rank: int) -> dict:
    """The metrics of one step (`batch`: a dataset.Batch)."""
    audio = float(batch.x_len.sum()) * window_stride
    return {"step": step, "epoch": epoch, "loss": round(loss, 5), "lr": lr, "utterances": len(batch.ids),
            "audio_seconds": round(audio, 3), "step_seconds": round(step_seconds, 4),
            "audio_seconds_per_second": round(audio / step_seconds, 3),
            "padding_fraction": round(batch.padding_fraction, 4), "frames": batch.x.shape[3],
            "rss_gb": round(rss_gb, 3), "memory_released": int(released), "rank": rank,
            "utterance_ids": " ".join(batch.ids)}


class MetricsLog:
    """metrics.csv, appended row by row and flushed (a resumed run continues the same file).

    `until_step`: the global step training starts from; rows after it (steps a killed run did after its last
    checkpoint, which the resumed run does again) are dropped, so each step appears once."""

    def __init__(self, path: str | Path, until_step: int | None = None) -> None:
        self.path = Path(path)
        if until_step is not None and self.path.exists():
            self._drop_after(until_step)
        new = not self.path.exists()
        self._fh = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._fh, fieldnames=METRIC_FIELDS)
        if new:
            self._writer.writeheader()

    def _drop_after(self, step: int) -> None:
        from ds2_helpers.atomic import atomic_write

        with open(self.path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        kept = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) <= step]
        if len(kept) < len(rows):
            def write(fh):
                writer = csv.DictWriter(fh, fieldnames=METRIC_FIELDS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(kept)

            atomic_write(self.path, write)

    def write(self, row: dict) -> None:
        self._writer.writerow(row)
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EpochProgress:
    """A tqdm bar for one epoch where someone watches (terminal or notebook), plain lines where nobody does."""

    def __init__(self, epoch: int, epochs: int, steps: int, done: int, *, enabled: bool, log_every: int) -> None:
        from tqdm.auto import tqdm

        self.epoch, self.epochs, self.steps, self.log_every = epoch, epochs, steps, log_every
        self.plain = enabled and not sys.stderr.isatty()  # nohup, a log file: no bar redrawn into it
        self.bar = tqdm(total=steps, initial=done, desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                        disable=not enabled or self.plain, dynamic_ncols=True)

    def update(self, row: dict, step_in_epoch: int) -> None:
        speed = row["audio_seconds_per_second"]
        self.bar.set_postfix(loss=f"{row['loss']:.3f}", audio_s_per_s=f"{speed:.1f}")
        self.bar.update()
        if self.plain and row["step"] % self.log_every == 0:
            print(f"epoch {self.epoch + 1}/{self.epochs} step {step_in_epoch}/{self.steps} (global {row['step']})"
                  f" loss {row['loss']:.4f} lr {row['lr']:.2e} {speed:.1f} audio-s/s {row['step_seconds']:.2f} s/step",
                  flush=True)

    def close(self) -> None:
        self.bar.close()
