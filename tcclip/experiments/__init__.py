"""The paper's experiments: the protocol table (`protocols`), the grid cells and their run state (`cells`), sweeps
over cells, run locally (`sweep`) or as SLURM job arrays (`slurm_arrays`), results tables (`results`) and the
published numbers (`paper_results`).

May import: `tcclip.training`, `tcclip.data`, `tcclip.model`, `tcclip.utils`. Never the applications or the commands.
"""
