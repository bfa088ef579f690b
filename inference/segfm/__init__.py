"""Our pipeline: one field of view around everything the user gave for a class (segment.py), zoom-1
tiles over a zoomed-out box answer (tiles.py), boundaries moved by the image's intensities (boundary.py)."""
