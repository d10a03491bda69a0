"""Training-time bit-level methods: BitPruner and Kim et al.'s stochastic coarse-fine pruning with adaptive
zero skipping (PNPU). Both are reconstructions from the papers' abstracts (methods.md sections 5 and 6): every
choice the abstracts leave open is a documented parameter of ``BitPrunerConfig`` / ``SCFLPConfig``."""
