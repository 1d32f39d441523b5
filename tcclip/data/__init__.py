"""Video data: decoding, sampling, transforms, datasets, datamodules and splits."""
