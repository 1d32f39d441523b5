"""Applications of a trained model: prediction (`predict`), explanations (`explain`), timelines of long footage
(`timeline`), open-set rejection and calibration (`openset`, `calibration`), export and conversion (`export`,
`convert`).

May import: `tcclip.training`, `tcclip.data`, `tcclip.model`, `tcclip.utils`. Never the experiments or the commands.
"""
