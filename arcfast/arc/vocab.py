"""Token ids of the compact format (spec: docs/FORMAT.md; C++ twin: csrc/compact.h).

One token per cell with id == colour (0-9), then a few structural ids. A model's vocabulary is cut
to these ids: ``SYMBOLS`` gives, for each id, the text whose single tokenizer token supplies its
embedding and LM-head row when a pretrained checkpoint is shrunk.
"""
ROW = 10      # ends every row of a grid
INPUT = 11    # an input grid follows
OUTPUT = 12   # an output grid follows
EOG = 13      # ends every grid; generation stops here
BOS = 14      # starts a prompt
PAD = 15      # padding: never attended, never trained
VOCAB_SIZE = 16   # the grid vocabulary: every prompt of the `output` objective, every generated grid
# The objectives' ids (docs/FORMAT.md, "Objectives"); ids 20-31 are reserved. A model needs
# OBJECTIVE_VOCAB ids for the `verify` objective; models with VOCAB_SIZE ids run the others.
CANDIDATE = 16  # a candidate output grid follows (verify)
VERDICT = 17    # the verdict on the candidate follows (verify)
YES = 18        # verdict: the candidate is the right output
NO = 19         # verdict: the candidate is wrong
OBJECTIVE_VOCAB = 20
RESERVED_VOCAB = 32
IGNORE_INDEX = -100  # label of a position that carries no loss
MAX_SIZE = 30        # default grid size limit (rows and columns)

SYMBOLS = tuple(str(c) for c in range(10)) + ("\n", "I", "O", "E", "B", "P")   # ids 0-15
OBJECTIVE_SYMBOLS = ("C", "?", "Y", "N")                                           # ids 16-19
NAMES = tuple(str(c) for c in range(10)) + ("ROW", "INPUT", "OUTPUT", "EOG", "BOS", "PAD", "CANDIDATE", "VERDICT",
                                            "YES", "NO")


def grid_len(h: int, w: int) -> int:
    """Tokens taken by one encoded h x w grid: a row end per row plus the end-of-grid token."""
    return h * (w + 1) + 1
