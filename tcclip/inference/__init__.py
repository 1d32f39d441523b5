"""Applications of a trained model: prediction (`predict`), explanations (`explain`), timelines of long footage
(`timeline`), how far to believe an answer: calibrated probabilities and open-set rejection (`openset`), export and
conversion (`export`, `convert`).

May import: `tcclip.training`, `tcclip.data`, `tcclip.model`, `tcclip.utils`. Never the experiments or the commands.
"""
