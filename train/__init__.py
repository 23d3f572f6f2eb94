"""Instruction tuning on Ray Train: a recipe (setup / train / save), not a framework.

data.py formats and tokenises, packing.py packs and collates, loss.py is the WIT loss, recipe.py is
the per-worker training function, launch.py builds and runs the TorchTrainer, evaluate.py scores
generations with ROUGE-L. Entry point: train.launch.run_training(cfg).
"""
