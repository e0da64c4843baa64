// Grid formats of the C++ core: the compact token ids and the text formats, both ways.
// docs/FORMAT.md is the spec; arcfast/reference/formats.py is the plain reference held equal to it
// by tests/test_formats.py. Nothing here touches Python, so any part of the core can use it with
// the GIL released.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "compact.h"
#include "grid.h"

namespace arcfast {

enum class Format : uint8_t { Compact = 0, Minimal, RowNumber, CodeBlock, ShapeRowNumber };
constexpr int NUM_FORMATS = 5;

inline const char* format_name(Format f) {
    switch (f) {
        case Format::Compact: return "compact";
        case Format::Minimal: return "minimal";
        case Format::RowNumber: return "row-number";
        case Format::CodeBlock: return "code-block";
        case Format::ShapeRowNumber: return "shape-row-number";
    }
    return "?";
}

inline bool format_from_name(const char* s, size_t n, Format* out) {
    for (int i = 0; i < NUM_FORMATS; ++i) {
        const char* name = format_name(Format(i));
        if (std::strlen(name) == n && std::memcmp(name, s, n) == 0) {
            *out = Format(i);
            return true;
        }
    }
    return false;
}

inline bool format_numbered(Format f) { return f == Format::RowNumber || f == Format::ShapeRowNumber; }
inline bool format_fenced(Format f) { return f == Format::CodeBlock || f == Format::ShapeRowNumber; }

// The order is the code order shared with arcfast.arc.formats.DecodeStatus.
enum class Status : uint8_t { Ok = 0, BadSymbol, Ragged, Empty, TooBig, ShapeMismatch, Unterminated };
constexpr int NUM_STATUSES = 7;

inline const char* status_name(Status s) {
    static const char* names[NUM_STATUSES] = {"ok", "bad_symbol", "ragged", "empty",
                                              "too_big", "shape_mismatch", "unterminated"};
    return names[int(s)];
}

struct Decoded {
    Status status = Status::Ok;
    int32_t h = 0, w = 0;  // 0 unless status is Ok
};

// ---------------------------------------------------------------------------------------------
// Encoding. Callers validate the grid (h, w >= 1, cells 0..9) before encoding.

inline int decimal_digits(int64_t v) {
    int d = 1;
    while (v >= 10) v /= 10, ++d;
    return d;
}

// Bytes of the text encoding of an h x w grid.
inline int64_t text_len(Format f, int32_t h, int32_t w) {
    int64_t n = int64_t(h) * w + (h - 1);  // cells and the newlines between rows
    if (format_numbered(f))
        for (int32_t r = 1; r <= h; ++r) n += decimal_digits(r) + 1;  // "<r> "
    if (f == Format::CodeBlock) n += 8 + 4;                           // "```grid\n" ... "\n```"
    if (f == Format::ShapeRowNumber)
        n += 15 + decimal_digits(h) + 1 + decimal_digits(w) + 1 + 4;  // "```grid shape: HxW\n" ... "\n```"
    return n;
}

// Length of the encoding in its own unit: tokens for compact, bytes for the text formats.
inline int64_t encoded_len(Format f, int32_t h, int32_t w) {
    return f == Format::Compact ? compact_grid_len(h, w) : text_len(f, h, w);
}

inline char* write_uint(char* p, uint32_t v) {
    char buf[10];
    int n = 0;
    do buf[n++] = char('0' + v % 10), v /= 10;
    while (v);
    while (n) *p++ = buf[--n];
    return p;
}

// Writes the compact ids of a grid: exactly compact_grid_len(h, w) values.
inline void write_compact(const uint8_t* cells, int32_t h, int32_t w, int32_t* out) {
    for (int32_t r = 0; r < h; ++r) {
        const uint8_t* row = cells + size_t(r) * w;
        for (int32_t c = 0; c < w; ++c) out[c] = int32_t(row[c]);
        out += w;
        *out++ = TOK_ROW;
    }
    *out = TOK_EOG;
}

// Writes the text encoding of a grid: exactly text_len(f, h, w) bytes, no terminating NUL.
inline char* write_text(Format f, const uint8_t* cells, int32_t h, int32_t w, char* p) {
    const bool numbered = format_numbered(f), fenced = format_fenced(f);
    if (fenced) {
        std::memcpy(p, "```grid", 7);
        p += 7;
        if (f == Format::ShapeRowNumber) {
            std::memcpy(p, " shape: ", 8);
            p = write_uint(p + 8, uint32_t(h));
            *p++ = 'x';
            p = write_uint(p, uint32_t(w));
        }
        *p++ = '\n';
    }
    for (int32_t r = 0; r < h; ++r) {
        if (r) *p++ = '\n';
        if (numbered) {
            p = write_uint(p, uint32_t(r + 1));
            *p++ = ' ';
        }
        const uint8_t* row = cells + size_t(r) * w;
        for (int32_t c = 0; c < w; ++c) p[c] = char('0' + row[c]);
        p += w;
    }
    if (fenced) {
        std::memcpy(p, "\n```", 4);
        p += 4;
    }
    return p;
}

// ---------------------------------------------------------------------------------------------
// Decoding. Every decoder reads in order and reports the first problem it meets; on Ok it appends
// the h*w cells (row-major) to `cells`, otherwise `cells` is left as it was.

// Compact ids up to the first EOG; anything after it is never read. T is any integer type.
// 0..9 for any integer type: negative values wrap to huge unsigned ones.
template <class T>
inline bool is_colour_id(T t) {
    return static_cast<typename std::make_unsigned<T>::type>(t) <= 9u;
}

template <class T>
Decoded decode_compact(const T* tok, size_t n, int32_t max_size, std::vector<uint8_t>& cells) {
    const size_t base = cells.size();
    // Cells are written through a pointer into room made up front: runs stop one cell past the
    // limit and the row count trips at max_size + 1, so no input writes more than this.
    const size_t room = std::min(n, size_t(max_size + 1) * size_t(max_size + 1));
    cells.resize(base + room);
    uint8_t* out = cells.data() + base;
    auto fail = [&](Status s) {
        cells.resize(base);
        return Decoded{s, 0, 0};
    };
    int64_t w = -1, h = 0;
    size_t i = 0;
    while (i < n) {
        // Once the width is known, a whole well-formed row is checked and copied in two loops the
        // compiler vectorises; a row that is not exactly w colours then ROW takes the exact path
        // below, which finds its first problem.
        if (w > 0 && size_t(w) < n - i && tok[i + size_t(w)] == T(TOK_ROW)) {
            using U = typename std::make_unsigned<T>::type;
            const T* row = tok + i;
            U bad = 0;  // an integer OR, not a bool: that form is the one gcc vectorises
            for (int64_t c = 0; c < w; ++c) bad |= U(U(row[c]) > 9u);
            if (!bad) {
                for (int64_t c = 0; c < w; ++c) out[c] = uint8_t(row[c]);
                out += w;
                i += size_t(w) + 1;
                if (++h > max_size) return fail(Status::TooBig);
                continue;
            }
        }
        // A row's cells in one tight run, then the token that ends the run.
        const size_t start = i;
        const size_t stop = std::min(n, start + size_t(max_size) + 1);
        while (i < stop && is_colour_id(tok[i])) *out++ = uint8_t(tok[i++]);
        const int64_t cur = int64_t(i - start);
        if (cur > max_size) return fail(Status::TooBig);
        if (i == n) break;
        const T t = tok[i++];
        if (t == T(TOK_ROW)) {
            if (w < 0)
                w = cur;
            else if (cur != w)
                return fail(Status::Ragged);
            if (++h > max_size) return fail(Status::TooBig);
        } else if (t == T(TOK_EOG)) {
            if (cur != 0) return fail(Status::Ragged);  // cells after the last ROW
            if (h == 0 || w == 0) return fail(Status::Empty);
            cells.resize(base + size_t(h * w));
            return Decoded{Status::Ok, int32_t(h), int32_t(w)};
        } else {
            return fail(Status::BadSymbol);
        }
    }
    return fail(Status::Unterminated);
}

inline bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}
inline bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Numbers written by a model can be arbitrarily long; saturating keeps them comparable to any
// size limit without overflow.
constexpr int64_t NUMBER_CAP = int64_t(1) << 40;

// One row line [p, e) (its '\n' and a '\r' before it already cut off); `index` is 0-based.
inline Status decode_row(const char* p, const char* e, bool numbered, int64_t index, int32_t max_size,
                         std::vector<uint8_t>& cells, int64_t* len) {
    if (numbered) {
        const char* start = p;
        int64_t num = 0;
        while (p < e && is_digit(*p)) {
            num = num * 10 + (*p - '0');
            if (num > NUMBER_CAP) num = NUMBER_CAP;
            ++p;
        }
        if (p == start || p == e || *p != ' ') return Status::BadSymbol;
        if (num != index + 1) return Status::ShapeMismatch;
        ++p;
    }
    int64_t count = 0;
    for (; p < e; ++p) {
        if (!is_digit(*p)) return Status::BadSymbol;
        if (++count > max_size) return Status::TooBig;
        cells.push_back(uint8_t(*p - '0'));
    }
    *len = count;
    return Status::Ok;
}

// A text format from its bytes (UTF-8; any non-ASCII byte is a bad symbol wherever a digit or a
// marker is expected). See docs/FORMAT.md, "Decoding text", for the rules implemented here.
inline Decoded decode_text(Format f, const char* s, size_t n, int32_t max_size, std::vector<uint8_t>& cells) {
    const size_t base = cells.size();
    auto fail = [&](Status st) {
        cells.resize(base);
        return Decoded{st, 0, 0};
    };
    const bool numbered = format_numbered(f), fenced = format_fenced(f);
    const char* p = s;
    const char* end = s + n;
    int64_t decl_h = -1, decl_w = -1;
    while (p < end && is_space(*p)) ++p;
    if (p == end) return fail(Status::Empty);
    if (fenced) {
        // The header, char by char: running out of text is a cut-off output, a wrong char is not.
        auto literal = [&](const char* lit) {
            for (; *lit; ++lit, ++p) {
                if (p == end) return Status::Unterminated;
                if (*p != *lit) return Status::BadSymbol;
            }
            return Status::Ok;
        };
        auto number = [&](int64_t* v) {
            if (p == end) return Status::Unterminated;
            if (!is_digit(*p)) return Status::BadSymbol;
            int64_t x = 0;
            for (; p < end && is_digit(*p); ++p) {
                x = x * 10 + (*p - '0');
                if (x > NUMBER_CAP) x = NUMBER_CAP;
            }
            *v = x;
            return Status::Ok;
        };
        Status st = literal("```grid");
        if (st == Status::Ok && f == Format::ShapeRowNumber) {
            st = literal(" shape: ");
            if (st == Status::Ok) st = number(&decl_h);
            if (st == Status::Ok) st = literal("x");
            if (st == Status::Ok) st = number(&decl_w);
        }
        if (st == Status::Ok) {
            if (p < end && *p == '\r') ++p;
            st = literal("\n");
        }
        if (st != Status::Ok) return fail(st);
        if (decl_h > max_size || decl_w > max_size) return fail(Status::TooBig);
    } else {
        while (end > p && is_space(end[-1])) --end;
    }
    int64_t h = 0, w = -1;
    for (;;) {
        const char* nl = static_cast<const char*>(std::memchr(p, '\n', size_t(end - p)));
        const char* le = nl ? nl : end;
        if (fenced) {
            if (le - p >= 3 && p[0] == '`' && p[1] == '`' && p[2] == '`') break;  // closing fence
            if (!nl) return fail(Status::Unterminated);  // ends without its fence, maybe mid-row
        }
        const char* re = (le > p && le[-1] == '\r') ? le - 1 : le;
        int64_t len = 0;
        const Status st = decode_row(p, re, numbered, h, max_size, cells, &len);
        if (st != Status::Ok) return fail(st);
        if (w < 0)
            w = len;
        else if (len != w)
            return fail(Status::Ragged);
        if (++h > max_size) return fail(Status::TooBig);
        if (!nl) break;
        p = nl + 1;
    }
    if (h == 0 || w == 0) return fail(Status::Empty);
    if (f == Format::ShapeRowNumber && (decl_h != h || decl_w != w)) return fail(Status::ShapeMismatch);
    return Decoded{Status::Ok, int32_t(h), int32_t(w)};
}

// Into a Grid, for callers inside the core (e.g. decoding generations before undoing augmentations).
// On Ok, g holds the grid; otherwise g is emptied (h = w = 0).
template <class T>
Status decode_compact(const T* tok, size_t n, int32_t max_size, Grid& g) {
    g.cells.clear();
    const Decoded d = decode_compact(tok, n, max_size, g.cells);
    g.h = d.h;
    g.w = d.w;
    return d.status;
}

inline Status decode_text(Format f, const char* s, size_t n, int32_t max_size, Grid& g) {
    g.cells.clear();
    const Decoded d = decode_text(f, s, n, max_size, g.cells);
    g.h = d.h;
    g.w = d.w;
    return d.status;
}

}  // namespace arcfast
