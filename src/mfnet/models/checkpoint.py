"""Reading checkpoints (ours and the authors'), loading them key for key, and inflating 2D weights to 3D."""
