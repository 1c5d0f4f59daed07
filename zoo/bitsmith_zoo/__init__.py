"""Real pretrained models and offline sample data for bitsmith."""
