"""Small shared utilities of long-running jobs: run logs (CSV + TensorBoard), checkpoints, videos."""
