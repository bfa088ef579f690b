"""SegFM3D interactive segmentation: case I/O -> prompts -> field of view -> network -> fusion -> output."""
