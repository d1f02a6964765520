"""Training stages: `vae`, `speech_ae`, `dit` (each `python -m pipeline.train.<stage>`), all on accelerate."""
