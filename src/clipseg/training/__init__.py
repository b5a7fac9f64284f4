"""Training and fine-tuning of the CLIPSeg decoder."""
