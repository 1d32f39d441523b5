"""Training: the TC-CLIP LightningModule, its callbacks, the learning-rate schedule, checkpoint I/O, run folders
and preemption.

May import: `tcclip.model`, `tcclip.data`, `tcclip.utils`. Never the experiments, the applications or the commands.
"""
