"""Training with Lightning: the LightningModules, the Trainer set-up, loaders over the shards, augmentation."""
