"""Training: the TC-CLIP LightningModule (`module`) with its hyper-parameters (`hparams`), network set-up
(`network`), optimiser and learning-rate schedule (`schedule`), evaluation arithmetic (`metrics`) and reporting
callbacks (`reporting`), the experiment suite's other callbacks, checkpoint I/O, run folders and preemption.

Checkpoint I/O: `checkpoints` (every kind of weights file, and `load_model`, the one loader: `tcclip.load_model`),
`safe_load` (reading without running pickled code), `portable` (the `tcclip export` folder), `calibration_record`
(the calibration stored with the weights) and `checkpoint_io` (how Lightning writes and restores a run's checkpoints).

May import: `tcclip.model`, `tcclip.data`, `tcclip.utils`. Never the experiments, the applications or the commands.
"""
