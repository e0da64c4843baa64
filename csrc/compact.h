// The compact token format shared by every part of the C++ core (docs/FORMAT.md is the spec).
// One token per cell, token id == colour; a few structural ids follow the ten colours.
#pragma once
#include <cstdint>

namespace arcfast {

constexpr int32_t TOK_ROW = 10;     // ends every row of a grid            (symbol "\n")
constexpr int32_t TOK_INPUT = 11;   // an input grid follows               (symbol "I")
constexpr int32_t TOK_OUTPUT = 12;  // an output grid follows              (symbol "O")
constexpr int32_t TOK_EOG = 13;     // ends every grid; generation stops   (symbol "E")
constexpr int32_t TOK_BOS = 14;     // starts a prompt                     (symbol "B")
constexpr int32_t TOK_PAD = 15;     // padding, never attended or trained  (symbol "P")
constexpr int32_t COMPACT_VOCAB = 16;  // the grid vocabulary
constexpr int32_t TOK_CANDIDATE = 16;  // a candidate output grid follows (verify)  (symbol "C")
constexpr int32_t TOK_VERDICT = 17;    // the verdict on the candidate follows      (symbol "?")
constexpr int32_t TOK_YES = 18;        // verdict: the candidate is right           (symbol "Y")
constexpr int32_t TOK_NO = 19;         // verdict: the candidate is wrong           (symbol "N")
constexpr int32_t OBJECTIVE_VOCAB = 20;  // ids 20..31 are reserved
constexpr int32_t IGNORE_INDEX = -100;  // label of a position that carries no loss

constexpr int DEFAULT_MAX_SIZE = 30;

// Tokens taken by one encoded h x w grid: a row end per row plus the end-of-grid token.
inline int64_t compact_grid_len(int64_t h, int64_t w) { return h * (w + 1) + 1; }

}  // namespace arcfast
