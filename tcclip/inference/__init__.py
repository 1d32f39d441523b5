"""Applications of a trained model: prediction (`predict`; a video as the model's test input in `clips`, running the
model on clips in `scoring`, the prediction record and its formats in `predictions`), explanations (`explain`),
timelines of long footage (`timeline`; its windows, segments and files in `timeline_windows`, `timeline_segments`,
`timeline_outputs`), how far to believe an answer: calibrated probabilities and open-set rejection (`openset`;
fitting them on a validation list in `calibrate`), export and conversion (`export`, `convert`). Frames are read
through `tcclip.data.video_reader`, as in training.

May import: `tcclip.training`, `tcclip.data`, `tcclip.model`, `tcclip.utils`. Never the experiments or the commands.
"""
