"""What the fine-tuning run's log lines say: the throughput of a training line and the validation
line (Dice after 1, 3 and 5 simulated clicks); the lines themselves are written by
:class:`~sam_l1dfl.training.runlog.Records`."""

from __future__ import annotations

REPORT_AT = (1, 3, 5)  # validation Dice after 1, 3 and 5 simulated clicks


class FinetuneRecords:
    """The logging hooks of :class:`~sam_l1dfl.training.loop.FinetuneTrainer` (a mixin: ``self`` is
    the trainer)."""

    def throughput(self, seconds: float) -> dict:
        rate = self.samples_since / max(seconds, 1e-9)
        self.samples_since = 0
        return {"samples_per_s": round(rate, 4)}

    def describe(self, res: dict) -> str:
        line = (f"step {self.state.global_step}: val Dice@1/3/5 = "
                + " / ".join(f"{res[f'dice@{k}']:.3f}" for k in REPORT_AT) + f" ({res['n_lesions']} lesions)")
        dep = res.get("image_dependence")
        if dep:
            line += f"; one-click masks vs zero/noise crops: Dice {dep['zeros']:.2f}/{dep['noise']:.2f}"
            if min(dep.values()) > 0.9:
                line += " (the masks ignore the image)"
        return line
