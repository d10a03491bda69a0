"""Training-time bit-level methods: BitPruner and Kim et al.'s stochastic coarse-fine pruning with adaptive
zero skipping (PNPU). Both are reconstructions from the papers' abstracts (methods.md sections 5 and 6): every
choice the abstracts leave open is a documented parameter of ``BitPrunerConfig`` / ``SCFLPConfig``."""

#: (source, what it does) per training method, here so that listing methods imports no torch
SOURCES = {
    "bitpruner": ("BitPruner (Zhao et al., DAC'20), reconstructed from the abstract: methods.md section 5 [I, low]",
                  "training: progressive, load-balanced pruning of weight bits"),
    "scflp": ("Kim et al. VLSI'20 / PNPU SSC-L'21, reconstructed from the abstracts and a third-party summary: "
              "methods.md section 6 [I, low-medium]",
              "training: stochastic coarse-fine pruning + adaptive zero skipping"),
}
