"""The book engine's array layout, shared by the engine (``book_engine``) and its compiled loop
(``book_kernels``), so that neither imports the other at load time."""

import numpy as np

UPDATE, SNAPSHOT, RESET = 0, 1, 2  # RESET: a sequence gap; no book until the next snapshot
# Operation columns (int64): kind, first level row, end level row, receive ns, exchange ns, update id.
KIND, START, END, RECEIVE_NS, EXCHANGE_NS, UPDATE_ID = range(6)
BID, ASK = 0, 1
BLOCK = 64  # levels a block holds; a full block splits in two halves
# Per side (int64): blocks in use, levels, free block slots.
BLOCKS, LEVELS, FREE = range(3)
# Statistics (int64).
APPLIED, EMITTED, CROSSED, FIRST_NS, LAST_NS, DEEPEST, OUT_ROWS, LAST_INTERVAL, SYNCED = range(9)
STATS = 9
NO_TIME = np.iinfo(np.int64).min
# Kernel answers: every operation done; the book needs room for more levels; the output is full.
DONE, GROW_BOOK, DRAIN_OUTPUT = 0, 1, 2
