"""Google TF1 checkpoints without TensorFlow: ``reader`` reads the bundle, ``convert`` writes a Hugging Face
folder from it (cached)."""
