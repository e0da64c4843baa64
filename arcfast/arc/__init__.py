"""ARC tasks without torch: the Task type, the compact token format, loading from every supported source, the dihedral/colour augmentations and their seeded RNG."""
