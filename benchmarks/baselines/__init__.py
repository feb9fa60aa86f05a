"""What a user would compare worldflow with, trained on the same episodes: heuristics that
need no training (frame difference, copy-last) and a convolutional autoencoder."""
