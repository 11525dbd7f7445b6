"""Networks, Lightning modules, the Trainer set-up and the weights-only model file (no tasks/ or flows/ imports)."""
