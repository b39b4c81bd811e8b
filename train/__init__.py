"""Training ResShift UNets (the official recipes and a tiny CPU recipe) on top of ``resshift_core``.

Entry points: ``python train/train.py`` (train), ``python train/export.py`` (EMA weights -> .safetensors for the
core, the CLI and the plugins), ``python train/evaluate.py`` (PSNR-Y on held-out photos through the CLI). This package
imports ``resshift_core``; ``resshift_core`` never imports it.
"""
