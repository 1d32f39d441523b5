"""Video data: what a frame is and how it is read (`video_frames`, `video_reader`, `checked_decode`), clip sampling
and transforms, datasets and one LightningDataModule per dataset family (`families`), class names (`labels`), the
split files (which protocols, K and seeds have them: `protocol_splits`; the official files: `splits`; your own:
`custom_splits`), a synthetic dataset (`synth`), and getting the datasets onto a disk (`download`, `acquire`,
`verify`, `prepare`).

May import: `tcclip.model` (class-name processing), `tcclip.utils`. Never training, experiments, the applications
or the commands.
"""
