"""The book engine's compiled loop (numba), imported when the first ``BookEngine`` is made.

``run`` applies a batch of operations to one symbol's book, kept as sorted blocks per side, and
copies out the top levels after each update; ``book_engine`` describes the book and its rules.
Compiled once per checkout (``cache=True``: about 5.5 CPU-seconds) and loaded from the cache
beside this module after that.
"""

from __future__ import annotations

import numba
import numpy as np

from bmlt_assets.core.sources.book_layout import (
    APPLIED,
    ASK,
    BID,
    BLOCK,
    BLOCKS,
    CROSSED,
    DEEPEST,
    DONE,
    DRAIN_OUTPUT,
    EMITTED,
    END,
    EXCHANGE_NS,
    FIRST_NS,
    FREE,
    GROW_BOOK,
    KIND,
    LAST_INTERVAL,
    LAST_NS,
    LEVELS,
    NO_TIME,
    OUT_ROWS,
    RECEIVE_NS,
    RESET,
    SNAPSHOT,
    START,
    SYNCED,
    UPDATE_ID,
)


@numba.njit(cache=True, nogil=True)
def _insert_block(order: np.ndarray, firsts: np.ndarray, count: int, at: int, slot: int, first: float) -> None:
    for i in range(count, at, -1):
        order[i] = order[i - 1]
        firsts[i] = firsts[i - 1]
    order[at] = slot
    firsts[at] = first


@numba.njit(cache=True, nogil=True)
def _change(
    keys: np.ndarray,
    quantities: np.ndarray,
    counts: np.ndarray,
    order: np.ndarray,
    firsts: np.ndarray,
    free: np.ndarray,
    meta: np.ndarray,
    key: float,
    quantity: float,
) -> None:
    """Set (quantity != 0) or remove (quantity == 0) the level ``key`` of one side. The caller
    guarantees a free block slot."""
    blocks = meta[BLOCKS]
    if blocks == 0:
        if quantity != 0:
            meta[FREE] -= 1
            slot = free[meta[FREE]]
            keys[slot, 0], quantities[slot, 0], counts[slot] = key, quantity, 1
            _insert_block(order, firsts, 0, 0, slot, key)
            meta[BLOCKS], meta[LEVELS] = 1, 1
        return
    lo, hi = 0, blocks
    while lo < hi:  # the first block whose first key is > key
        mid = (lo + hi) >> 1
        if firsts[mid] <= key:
            lo = mid + 1
        else:
            hi = mid
    block = max(lo - 1, 0)
    slot, count = order[block], counts[order[block]]
    lo, hi = 0, count
    while lo < hi:  # the first level whose key is >= key
        mid = (lo + hi) >> 1
        if keys[slot, mid] < key:
            lo = mid + 1
        else:
            hi = mid
    if lo < count and keys[slot, lo] == key:
        if quantity != 0:
            quantities[slot, lo] = quantity
            return
        for j in range(lo, count - 1):
            keys[slot, j] = keys[slot, j + 1]
            quantities[slot, j] = quantities[slot, j + 1]
        counts[slot] = count - 1
        meta[LEVELS] -= 1
        if count == 1:  # the block is empty: drop it
            for i in range(block, blocks - 1):
                order[i] = order[i + 1]
                firsts[i] = firsts[i + 1]
            meta[BLOCKS] = blocks - 1
            free[meta[FREE]] = slot
            meta[FREE] += 1
        elif lo == 0:
            firsts[block] = keys[slot, 0]
        return
    if quantity == 0:
        return
    if count == BLOCK:  # split the full block; the upper half goes to a new block after it
        half = BLOCK // 2
        meta[FREE] -= 1
        upper = free[meta[FREE]]
        keys[upper, :half] = keys[slot, half:]
        quantities[upper, :half] = quantities[slot, half:]
        counts[slot], counts[upper] = half, half
        _insert_block(order, firsts, blocks, block + 1, upper, keys[upper, 0])
        meta[BLOCKS] = blocks + 1
        if lo > half:
            block, slot, lo = block + 1, upper, lo - half
        count = half
    for j in range(count, lo, -1):
        keys[slot, j] = keys[slot, j - 1]
        quantities[slot, j] = quantities[slot, j - 1]
    keys[slot, lo], quantities[slot, lo] = key, quantity
    counts[slot] = count + 1
    meta[LEVELS] += 1
    if lo == 0:
        firsts[block] = key


@numba.njit(cache=True, nogil=True)
def _replace(
    keys: np.ndarray,
    quantities: np.ndarray,
    counts: np.ndarray,
    order: np.ndarray,
    firsts: np.ndarray,
    free: np.ndarray,
    meta: np.ndarray,
    row_keys: np.ndarray,
    row_quantities: np.ndarray,
) -> None:
    """Make a side hold exactly a snapshot's rows, applied in order: of repeated keys the last row
    wins, and a winning quantity that is not positive leaves the level out. Blocks are filled
    half, leaving room to grow. The caller guarantees enough block slots."""
    capacity = keys.shape[0]
    ranked = np.argsort(row_keys, kind="mergesort")  # stable: rows of one key stay in row order
    meta[BLOCKS], meta[LEVELS], meta[FREE] = 0, 0, capacity
    for i in range(capacity):
        free[i] = capacity - 1 - i
    half = BLOCK // 2
    for i in range(ranked.shape[0]):
        row = ranked[i]
        if i + 1 < ranked.shape[0] and row_keys[ranked[i + 1]] == row_keys[row]:
            continue  # a later row of the same price decides
        if not row_quantities[row] > 0:
            continue
        blocks = meta[BLOCKS]
        if blocks == 0 or counts[order[blocks - 1]] == half:
            meta[FREE] -= 1
            slot = free[meta[FREE]]
            counts[slot] = 0
            order[blocks], firsts[blocks] = slot, row_keys[row]
            meta[BLOCKS] = blocks + 1
        slot = order[meta[BLOCKS] - 1]
        keys[slot, counts[slot]], quantities[slot, counts[slot]] = row_keys[row], row_quantities[row]
        counts[slot] += 1
        meta[LEVELS] += 1


@numba.njit(cache=True, nogil=True)
def _best(keys: np.ndarray, counts: np.ndarray, order: np.ndarray, meta: np.ndarray) -> float:
    slot = order[meta[BLOCKS] - 1]
    return keys[slot, counts[slot] - 1]


@numba.njit(cache=True, nogil=True)
def _top(
    keys: np.ndarray,
    quantities: np.ndarray,
    counts: np.ndarray,
    order: np.ndarray,
    meta: np.ndarray,
    sign: float,
    levels: int,
    out_prices: np.ndarray,
    out_quantities: np.ndarray,
) -> None:
    """The best ``levels`` levels of a side, best first (``sign`` turns keys back into prices)."""
    written, block = 0, meta[BLOCKS] - 1
    while written < levels:
        slot = order[block]
        j = counts[slot] - 1
        while j >= 0 and written < levels:
            out_prices[written] = sign * keys[slot, j]
            out_quantities[written] = quantities[slot, j]
            written += 1
            j -= 1
        block -= 1


@numba.njit(cache=True, nogil=True)
def run(
    keys: np.ndarray,
    quantities: np.ndarray,
    counts: np.ndarray,
    order: np.ndarray,
    firsts: np.ndarray,
    free: np.ndarray,
    meta: np.ndarray,
    is_bid: np.ndarray,
    prices: np.ndarray,
    amounts: np.ndarray,
    operations: np.ndarray,
    first: int,
    levels: int,
    every_ns: int,
    out_books: np.ndarray,
    out_meta: np.ndarray,
    stats: np.ndarray,
) -> tuple[int, int]:
    """Apply ``operations[first:]``; returns (DONE | GROW_BOOK | DRAIN_OUTPUT, the next operation).

    The side arrays have the side (BID, ASK) first: ``keys``/``quantities`` (2, slots, BLOCK),
    ``counts``/``order``/``free`` (2, slots), ``firsts`` (2, slots), ``meta`` (2, 3).
    ``out_books`` is (rows, 4, levels): bid prices, bid quantities, ask prices, ask quantities;
    ``out_meta`` is (rows, 3): exchange ns, receive ns, update id."""
    slots = keys.shape[1]
    for index in range(first, operations.shape[0]):
        kind, start, end = operations[index, KIND], operations[index, START], operations[index, END]
        if kind == RESET:
            stats[SYNCED] = 0
            continue
        if kind == SNAPSHOT:
            # Room for every row, in half-full blocks.
            if 2 * (end - start) // BLOCK + 2 > slots:
                return GROW_BOOK, index
            for side in (BID, ASK):
                wanted = is_bid[start:end] == (side == BID)
                row_keys = prices[start:end][wanted]
                if side == ASK:
                    row_keys = -row_keys
                _replace(
                    keys[side],
                    quantities[side],
                    counts[side],
                    order[side],
                    firsts[side],
                    free[side],
                    meta[side],
                    row_keys,
                    amounts[start:end][wanted],
                )
            stats[SYNCED] = 1
            continue
        if stats[SYNCED] == 0:
            continue  # no book before the first snapshot (or since a gap): nothing to change
        if meta[BID, FREE] < end - start or meta[ASK, FREE] < end - start:
            return GROW_BOOK, index  # each change may split a block
        receive_ns = operations[index, RECEIVE_NS]
        interval = receive_ns // every_ns if every_ns > 0 else 0
        # With a cadence, a book of the same interval as the last kept one replaces it.
        replaces = every_ns > 0 and stats[OUT_ROWS] > 0 and interval == stats[LAST_INTERVAL]
        if not replaces and stats[OUT_ROWS] == out_meta.shape[0]:
            return DRAIN_OUTPUT, index
        for row in range(start, end):
            side = BID if is_bid[row] else ASK
            key = prices[row] if side == BID else -prices[row]
            _change(
                keys[side],
                quantities[side],
                counts[side],
                order[side],
                firsts[side],
                free[side],
                meta[side],
                key,
                amounts[row],
            )
        stats[APPLIED] += 1
        n_bid, n_ask = meta[BID, LEVELS], meta[ASK, LEVELS]
        if n_bid < levels or n_ask < levels:
            stats[DEEPEST] = max(stats[DEEPEST], min(n_bid, n_ask))
            continue
        stats[EMITTED] += 1
        if _best(keys[BID], counts[BID], order[BID], meta[BID]) >= -_best(
            keys[ASK], counts[ASK], order[ASK], meta[ASK]
        ):
            stats[CROSSED] += 1
        if stats[FIRST_NS] == NO_TIME or receive_ns < stats[FIRST_NS]:
            stats[FIRST_NS] = receive_ns
        if stats[LAST_NS] == NO_TIME or receive_ns > stats[LAST_NS]:
            stats[LAST_NS] = receive_ns
        if not replaces:
            stats[OUT_ROWS] += 1
        stats[LAST_INTERVAL] = interval
        row = stats[OUT_ROWS] - 1
        _top(
            keys[BID],
            quantities[BID],
            counts[BID],
            order[BID],
            meta[BID],
            1.0,
            levels,
            out_books[row, 0],
            out_books[row, 1],
        )
        _top(
            keys[ASK],
            quantities[ASK],
            counts[ASK],
            order[ASK],
            meta[ASK],
            -1.0,
            levels,
            out_books[row, 2],
            out_books[row, 3],
        )
        out_meta[row, 0] = operations[index, EXCHANGE_NS]
        out_meta[row, 1] = receive_ns
        out_meta[row, 2] = operations[index, UPDATE_ID]
    return DONE, operations.shape[0]
