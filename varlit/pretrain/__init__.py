"""Pretraining and full fine-tuning: the BSQ-VAE and the Infinity transformer on captioned images.

The same modules train the `world` preset from scratch and continue training any preset on any folder of
images with captions (`varlit pretrain vae|infinity --config ...`).
"""
