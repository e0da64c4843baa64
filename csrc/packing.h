// Sequence packing: best-fit-decreasing placement of samples into fixed-length rows, and the
// writer that lays placed samples out as a PackedBatch (conventions: arcfast/samples/batch.py).
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <numeric>
#include <utility>
#include <vector>

#include <emmintrin.h>

#include "compact.h"

namespace arcfast {

// Non-temporal stores for the batch arrays: a batch (megabytes) is written once and read later by
// another thread, so ordinary stores would first read every line into cache (read-for-ownership),
// doubling the memory traffic of what is a write-bandwidth-bound loop.
inline void stream_fill(int32_t* p, int64_t n, int32_t v) {
    while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 15)) {
        *p++ = v;
        --n;
    }
    const __m128i x = _mm_set1_epi32(v);
    for (; n >= 4; n -= 4, p += 4) _mm_stream_si128(reinterpret_cast<__m128i*>(p), x);
    while (n-- > 0) *p++ = v;
}

inline void stream_iota(int32_t* p, int64_t n) {
    int32_t v = 0;
    while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 15)) {
        *p++ = v++;
        --n;
    }
    __m128i x = _mm_setr_epi32(v, v + 1, v + 2, v + 3);
    const __m128i four = _mm_set1_epi32(4);
    for (; n >= 4; n -= 4, p += 4, v += 4) {
        _mm_stream_si128(reinterpret_cast<__m128i*>(p), x);
        x = _mm_add_epi32(x, four);
    }
    while (n-- > 0) *p++ = v++;
}

inline void stream_copy(int32_t* dst, const int32_t* src, int64_t n) {
    while (n > 0 && (reinterpret_cast<uintptr_t>(dst) & 15)) {
        *dst++ = *src++;
        --n;
    }
    for (; n >= 4; n -= 4, dst += 4, src += 4)
        _mm_stream_si128(reinterpret_cast<__m128i*>(dst), _mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
    while (n-- > 0) *dst++ = *src++;
}

// Best-fit-decreasing. Samples are taken by decreasing length (ties: smaller key first); each goes
// to the row whose free space is the smallest that still holds it (ties: the lower row). With
// fixed_rows > 0 there are exactly that many rows and a sample that fits none gets row -1; with
// fixed_rows <= 0 a new row opens whenever none fits. Returns the number of rows.
// `urgent` (optional) marks samples taken before all others, in key order: a window packer uses it
// for samples that have waited too long, since by length alone short samples could wait forever.
// row_of[i], off_of[i]: the row and the offset in it of sample i.
inline int32_t best_fit_decreasing(const std::vector<int32_t>& lens, const std::vector<int64_t>& keys,
                                   int32_t row_len, int32_t fixed_rows, std::vector<int32_t>& row_of,
                                   std::vector<int32_t>& off_of, const std::vector<uint8_t>* urgent = nullptr) {
    const size_t n = lens.size();
    std::vector<int32_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int32_t x, int32_t y) {
        if (urgent) {
            const bool ux = (*urgent)[x], uy = (*urgent)[y];
            if (ux != uy) return ux;
            if (ux) return keys[x] < keys[y];
        }
        return lens[x] != lens[y] ? lens[x] > lens[y] : keys[x] < keys[y];
    });
    std::vector<int32_t> used(fixed_rows > 0 ? fixed_rows : 0, 0);
    row_of.assign(n, -1);
    off_of.assign(n, 0);
    for (int32_t i : order) {
        const int32_t L = lens[i];
        int32_t best = -1, best_free = row_len + 1;
        for (int32_t r = 0; r < int32_t(used.size()); ++r) {
            const int32_t free = row_len - used[r];
            if (free >= L && free < best_free) {
                best = r;
                best_free = free;
            }
        }
        if (best < 0) {
            if (fixed_rows > 0 || L > row_len) continue;
            best = int32_t(used.size());
            used.push_back(0);
        }
        row_of[i] = best;
        off_of[i] = used[best];
        used[best] += L;
    }
    return int32_t(used.size());
}

// Recycled batch memory. A batch is ~20 bytes per position (five int32 arrays); fresh pages for
// every batch cost a page fault per 4 KiB, which measured as a third of the stream's time, so
// buffers come back here when numpy frees the arrays that view them.
struct BufferPool {
    std::mutex mu;
    std::vector<std::pair<int32_t*, size_t>> free;
    size_t keep;
    explicit BufferPool(size_t keep_) : keep(keep_) {}
    ~BufferPool() {
        for (auto& f : free) delete[] f.first;
    }
    int32_t* take(size_t n, size_t& cap) {
        {
            std::lock_guard<std::mutex> l(mu);
            size_t best = free.size();
            for (size_t i = 0; i < free.size(); ++i)
                if (free[i].second >= n && (best == free.size() || free[i].second < free[best].second)) best = i;
            if (best < free.size()) {
                auto f = free[best];
                free.erase(free.begin() + best);
                cap = f.second;
                return f.first;
            }
        }
        // slack so that a batch a few rows longer (per-task batches vary) reuses this buffer later
        cap = n + n / 8;
        return new int32_t[cap];
    }
    void give(int32_t* p, size_t cap) {
        {
            std::lock_guard<std::mutex> l(mu);
            if (free.size() < keep) {
                free.emplace_back(p, cap);
                return;
            }
        }
        delete[] p;
    }
};

// An uninitialised int32 buffer, returned to its pool (or freed) when dropped.
class PooledBuffer {
   public:
    PooledBuffer() = default;
    PooledBuffer(const PooledBuffer&) = delete;
    PooledBuffer& operator=(const PooledBuffer&) = delete;
    PooledBuffer(PooledBuffer&& o) noexcept { *this = std::move(o); }
    PooledBuffer& operator=(PooledBuffer&& o) noexcept {
        if (this != &o) {
            release();
            data_ = o.data_;
            cap_ = o.cap_;
            pool_ = std::move(o.pool_);
            o.data_ = nullptr;
            o.cap_ = 0;
        }
        return *this;
    }
    ~PooledBuffer() { release(); }
    void allocate(size_t n, std::shared_ptr<BufferPool> pool) {
        release();
        pool_ = std::move(pool);
        if (pool_) {
            data_ = pool_->take(n, cap_);
        } else {
            data_ = new int32_t[n];
            cap_ = n;
        }
    }
    void release() {
        if (!data_) return;
        if (pool_) pool_->give(data_, cap_);
        else delete[] data_;
        data_ = nullptr;
        cap_ = 0;
    }
    int32_t* data() const { return data_; }

   private:
    int32_t* data_ = nullptr;
    size_t cap_ = 0;
    std::shared_ptr<BufferPool> pool_;
};

// The arrays of a PackedBatch in one buffer (ids, labels, positions, sample ids, adapter ids, each
// rows x row_len), owned by the core until handed to numpy.
struct BatchArrays {
    int32_t rows = 0, row_len = 0;
    PooledBuffer buf;
    std::vector<int32_t> cu;

    void init(int32_t r, int32_t L, std::shared_ptr<BufferPool> pool = nullptr) {
        rows = r;
        row_len = L;
        buf.allocate(std::max<size_t>(1, 5 * size()), std::move(pool));
        cu.clear();
    }
    size_t size() const { return size_t(rows) * row_len; }
    int32_t* ids() const { return buf.data(); }
    int32_t* labels() const { return buf.data() + size(); }
    int32_t* pos() const { return buf.data() + 2 * size(); }
    int32_t* sid() const { return buf.data() + 3 * size(); }
    int32_t* aid() const { return buf.data() + 4 * size(); }
};

// Placed samples ordered as the batch numbers them: by row, then by offset in the row.
inline std::vector<int32_t> placement_order(const std::vector<int32_t>& row_of, const std::vector<int32_t>& off_of) {
    std::vector<int32_t> order;
    for (int32_t i = 0; i < int32_t(row_of.size()); ++i)
        if (row_of[i] >= 0) order.push_back(i);
    std::sort(order.begin(), order.end(), [&](int32_t x, int32_t y) {
        return row_of[x] != row_of[y] ? row_of[x] < row_of[y] : off_of[x] < off_of[y];
    });
    return order;
}

// Writes every position of the batch: placed samples (`write(i, ids, labels)` writes sample i's
// tokens and labels; positions, sample and adapter ids are filled here) and the padding after them.
// cu_seqlens gets each sample's end, and each row's tail padding as one more segment.
template <class Write>
inline void lay_out(BatchArrays& b, const std::vector<int32_t>& order, const std::vector<int32_t>& row_of,
                    const std::vector<int32_t>& off_of, const std::vector<int32_t>& lens,
                    const std::vector<int32_t>& adapter, Write&& write) {
    b.cu.assign(1, 0);
    // Samples are written to a small scratch that stays in cache, then streamed out.
    int32_t max_len = 0;
    for (int32_t i : order) max_len = std::max(max_len, lens[i]);
    std::vector<int32_t> scratch(2 * size_t(max_len));
    size_t k = 0;
    for (int32_t r = 0; r < b.rows; ++r) {
        const int64_t row0 = int64_t(r) * b.row_len;
        int32_t end = 0;
        for (; k < order.size() && row_of[order[k]] == r; ++k) {
            const int32_t i = order[k];
            const int32_t L = lens[i];
            const int64_t at = row0 + off_of[i];
            write(i, scratch.data(), scratch.data() + max_len);
            stream_copy(b.ids() + at, scratch.data(), L);
            stream_copy(b.labels() + at, scratch.data() + max_len, L);
            stream_iota(b.pos() + at, L);
            stream_fill(b.sid() + at, L, int32_t(k));
            stream_fill(b.aid() + at, L, adapter[i]);
            end = off_of[i] + L;
            b.cu.push_back(int32_t(row0 + end));
        }
        if (end < b.row_len) {
            const int64_t at = row0 + end, n = b.row_len - end;
            stream_fill(b.ids() + at, n, TOK_PAD);
            stream_fill(b.labels() + at, n, IGNORE_INDEX);
            stream_fill(b.pos() + at, n, 0);
            stream_fill(b.sid() + at, n, -1);
            stream_fill(b.aid() + at, n, -1);
            b.cu.push_back(int32_t(row0 + b.row_len));
        }
    }
    _mm_sfence();  // the streamed stores are visible before the batch is handed to another thread
}

}  // namespace arcfast
