"""The OrthoDiffusion model for serving: 3D denoising UNet and diffusion, features, task heads, evidence readouts,
preprocessing, runtime placement and the model card with its weights (no training code)."""
