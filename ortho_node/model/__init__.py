"""The OrthoDiffusion backbone: 3D denoising UNet, diffusion, checkpoints, preprocessing, pretraining."""
