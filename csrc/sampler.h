// Leave-one-out sampling and prompt assembly: a training sample of a task is a pure function of
// (seed, task id, sample index). The draw order below is the contract the plain-Python reference
// (arcfast/reference/pipeline.py) repeats; change one, change both.
//
// Three objectives (docs/FORMAT.md, "Objectives"), one drawn per slot:
//   output  BOS (INPUT g OUTPUT g)* INPUT target_in OUTPUT target_out      loss on target_out
//   input   BOS (INPUT g)* INPUT target_in                                 loss on target_in
//   verify  BOS (INPUT g OUTPUT g)* INPUT target_in CANDIDATE c VERDICT v  loss on v (YES / NO)
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "augment.h"
#include "grid.h"

namespace arcfast {

// A task as the sampler holds it: train pairs, then test pairs (outputs where known).
struct TaskData {
    std::string id, source;
    uint64_t key = 0;  // fnv1a64(id)
    std::vector<Grid> ins, outs;  // train pairs first, then test pairs
    std::vector<uint8_t> known;   // the pair's output is known
    int32_t n_train = 0;
    std::vector<int32_t> pool[2];  // pair indices a sample may use: [0] train only, [1] + known tests
    std::vector<int32_t> pool_input;  // pair indices the `input` objective uses: every pair (inputs are known)
    // Listed wrong predictions by pair index (empty, or one list per pair), in the original frame;
    // never equal to the pair's output (the store drops those).
    std::vector<std::vector<Grid>> wrong;
};

enum Objective : int32_t { OBJ_OUTPUT = 0, OBJ_INPUT = 1, OBJ_VERIFY = 2 };
constexpr int N_OBJECTIVES = 3;

// What a verify sample's candidate is: the right output, a listed wrong prediction, or one of the
// synthetic corruptions (ids 2-9, drawn as 2 + below(8)). Names: arcfast.samples.sampling.CANDIDATE_KINDS.
enum CandidateKind : int32_t {
    CAND_NONE = -1,
    CAND_RIGHT = 0,
    CAND_PREDICTION = 1,
    CAND_CELLS = 2,
    CAND_SWAP_COLORS = 3,
    CAND_ADD_ROW = 4,
    CAND_DROP_ROW = 5,
    CAND_ADD_COL = 6,
    CAND_DROP_COL = 7,
    CAND_TRANSFORM = 8,
    CAND_INPUT = 9,
};
constexpr int N_CANDIDATE_KINDS = 10;
constexpr int FIRST_CORRUPTION = CAND_CELLS;
constexpr int N_CORRUPTIONS = N_CANDIDATE_KINDS - FIRST_CORRUPTION;

enum Mode : int32_t { MODE_TTFT = 0, MODE_PRETRAIN = 1 };
enum TooLong : int32_t { DROP_DEMOS = 0, SKIP = 1 };
enum LossOn : int32_t { LOSS_TARGET = 0, LOSS_OUTPUTS = 1 };

struct SampleCfg {
    int32_t mode = MODE_TTFT;
    int32_t max_len = 8192;
    int32_t on_too_long = DROP_DEMOS;
    int32_t loss_on = LOSS_TARGET;
    int32_t max_demos = 0;  // 0: every other pair of the pool
    int32_t max_attempts = 8;
    // Ablation only, never a default: the always-swap bug of an earlier public TTFT implementation.
    // The last pair of the output/verify pool is never a target (targets cycle over the first n - 1
    // pairs) and is always offered as a demonstration.
    bool swap_bug = false;
    double objectives[N_OBJECTIVES] = {1.0, 0.0, 0.0};  // weight of each objective, by id (shares of samples)
    double verify_right = 0.5;                         // probability that a verify candidate is the right output
};

struct AugCfg {
    std::vector<int32_t> transforms{0, 1, 2, 3, 4, 5, 6, 7};
    bool permute_colors = true;
    double keep_zero_prob = 0.9;
    bool shuffle_demos = true;
    double comp_prob = 0.0;
    std::vector<int32_t> comp_kinds{COMP_GEOMETRIC, COMP_PAD, COMP_UPSCALE, COMP_MIRROR};
    std::vector<int32_t> comp_sides{SIDE_INPUT, SIDE_OUTPUT};
    int32_t max_size = DEFAULT_MAX_SIZE;
};

// What happened while drawing samples; summed over slots, so any grouping of slots adds up.
struct Counters {
    int64_t samples = 0;               // samples produced
    int64_t skipped = 0;               // draws rejected as too long (each retried as a fresh draw)
    int64_t dropped_demos = 0;         // demonstrations removed to fit the length limit
    int64_t trimmed = 0;               // samples that lost at least one demonstration
    int64_t empty_slots = 0;           // slots whose every draw was rejected
    int64_t compositions = 0;          // samples carrying a task composition
    int64_t compositions_dropped = 0;  // compositions drawn but dropped for the size limit
    int64_t objective[N_OBJECTIVES] = {};       // samples of each objective
    int64_t candidate[N_CANDIDATE_KINDS] = {};  // verify samples by candidate kind
    int64_t candidate_fallbacks = 0;            // corruptions that could not apply and became `cells`
    void add(const Counters& o) {
        samples += o.samples;
        skipped += o.skipped;
        dropped_demos += o.dropped_demos;
        trimmed += o.trimmed;
        empty_slots += o.empty_slots;
        compositions += o.compositions;
        compositions_dropped += o.compositions_dropped;
        for (int j = 0; j < N_OBJECTIVES; ++j) objective[j] += o.objective[j];
        for (int j = 0; j < N_CANDIDATE_KINDS; ++j) candidate[j] += o.candidate[j];
        candidate_fallbacks += o.candidate_fallbacks;
    }
};

// Stream tags: 1 a draw of a slot, 2 the target epochs of the `output`/`verify` pool, 3 test-time
// augmentations (arcfast.arc.augment), 4 the objective of a slot, 5 the target epochs of the `input` pool.
constexpr uint64_t TAG_SAMPLE = 1, TAG_EPOCH = 2, TAG_OBJECTIVE = 4, TAG_EPOCH_INPUT = 5;

// One drawn sample, before its tokens are written.
struct Plan {
    int32_t task = 0;        // index of the task in the sampler's list (the adapter id)
    int64_t index = 0;       // slot index within the task
    int32_t attempt = 0;     // 0 unless earlier draws of the slot were too long
    int64_t seq = 0;         // position in the stream (ties of the packer broken by it)
    int64_t born = 0;        // the batch being planned when the flat packer drew it
    int32_t target = 0;      // pool index of the target pair
    int32_t objective = OBJ_OUTPUT;
    std::vector<int32_t> pairs;  // prompt order: demonstrations (pool indices), then the target
    GridAug aug;
    // When aug.comp is active: the composed grid of each prompt pair's side (for verify, the
    // target's output side is its candidate; for input, an output-side composition composes nothing).
    std::vector<Grid> composed;
    int32_t cand_kind = CAND_NONE;  // verify: what the candidate is
    bool cand_fallback = false;     // verify: the drawn corruption could not apply; `cells` was used
    Grid candidate;                 // verify: the candidate output, original frame
    int32_t length = 0;
    int32_t dropped = 0;
    int32_t n_demos() const { return int32_t(pairs.size()) - 1; }
};

inline int64_t grid_tokens_after(int t, int32_t h, int32_t w) {
    return dihedral_swaps(t) ? compact_grid_len(w, h) : compact_grid_len(h, w);
}

// The pool an objective draws from: pair indices into TaskData::ins / outs.
inline const std::vector<int32_t>& objective_pool(const TaskData& task, int32_t mode, int32_t objective) {
    return objective == OBJ_INPUT ? task.pool_input : task.pool[mode];
}

// The input grid written for prompt pair i (composed when the composition is on the input side).
inline const Grid& plan_input(const TaskData& task, const std::vector<int32_t>& pool, const Plan& p, size_t i) {
    if (p.aug.comp.active() && p.aug.comp.side == SIDE_INPUT) return p.composed[i];
    return task.ins[pool[p.pairs[i]]];
}

// The output grid written for prompt pair i: for verify, the target's is its candidate.
inline const Grid& plan_output(const TaskData& task, const std::vector<int32_t>& pool, const Plan& p, size_t i) {
    if (p.aug.comp.active() && p.aug.comp.side == SIDE_OUTPUT) return p.composed[i];
    if (p.objective == OBJ_VERIFY && i + 1 == p.pairs.size()) return p.candidate;
    return task.outs[pool[p.pairs[i]]];
}

// Length of the plan's prompt: BOS + per pair INPUT grid OUTPUT grid (output); BOS + per pair
// INPUT grid (input); for verify the target's OUTPUT is CANDIDATE, and VERDICT and the label follow.
inline int64_t plan_length(const TaskData& task, const std::vector<int32_t>& pool, const Plan& p) {
    int64_t n = 1;
    const int t = p.aug.transform;
    for (size_t i = 0; i < p.pairs.size(); ++i) {
        const Grid& in = plan_input(task, pool, p, i);
        n += 1 + grid_tokens_after(t, in.h, in.w);
        if (p.objective == OBJ_INPUT) continue;
        const Grid& out = plan_output(task, pool, p, i);
        n += 1 + grid_tokens_after(t, out.h, out.w);
    }
    if (p.objective == OBJ_VERIFY) n += 2;
    return n;
}

// The objective of slot `index`: the only one with weight > 0, else the first j (by id) with
// x < w_0 + ... + w_j, x = uniform() * (sum of the weights) of Rng(combine(combine(tk, 4), index)).
inline int32_t draw_objective(uint64_t tk, int64_t index, const SampleCfg& sc) {
    int32_t positive = 0, last = OBJ_OUTPUT;
    double total = 0.0;
    for (int32_t j = 0; j < N_OBJECTIVES; ++j)
        if (sc.objectives[j] > 0) {
            ++positive;
            last = j;
            total += sc.objectives[j];
        }
    if (positive <= 1) return last;
    Rng r(combine64(combine64(tk, TAG_OBJECTIVE), uint64_t(index)));
    const double x = r.uniform() * total;
    double acc = 0.0;
    for (int32_t j = 0; j < N_OBJECTIVES; ++j) {
        if (sc.objectives[j] <= 0) continue;
        acc += sc.objectives[j];
        if (x < acc) return j;
    }
    return last;
}

inline bool same_grid(const Grid& a, const Grid& b) { return a.h == b.h && a.w == b.w && a.cells == b.cells; }

// A synthetic corruption of `right` (the pair's output; `input` its input) of the given kind, into
// out. False, having drawn nothing, when the kind cannot apply (a side at its limit, a grid its
// own transforms cannot change, an input equal to the output); every kind that applies differs
// from `right` by construction. The draws of each kind (reference: arcfast/reference/pipeline.py):
//   cells        k = 1 + below(max(1, h*w / 10)); k times: cell = a partial Fisher-Yates step over
//                the h*w positions (j + below(h*w - j)), then colour (old + 1 + below(9)) % 10
//   swap_colors  colours present, ascending: 2+ of them: a = below(n), b = below(n - 1) (skipping
//                a), the two swapped everywhere; one: it becomes (c + 1 + below(9)) % 10
//   add_row      (h < max_size) at r = below(h + 1); below(2) == 0: a copy of a neighbour row (row
//                0 when r == 0, row h-1 when r == h, else row r - 1 + below(2)); else w colours below(10)
//   drop_row     (h > 1) row below(h) removed; add_col / drop_col the same on columns
//   transform    the dihedral transforms 1-7 that change the grid, one of them by below(count)
//   input        the pair's input (no draw)
inline bool corrupt(int32_t kind, const Grid& right, const Grid& input, int32_t max_size, Rng& rng, Grid& out) {
    const int32_t h = right.h, w = right.w;
    switch (kind) {
        case CAND_CELLS: {
            out = right;
            const int32_t n = h * w;
            const int32_t k = 1 + int32_t(rng.below(uint32_t(std::max(1, n / 10))));
            std::vector<int32_t> pos(static_cast<size_t>(n));
            for (int32_t i = 0; i < n; ++i) pos[i] = i;
            for (int32_t j = 0; j < k; ++j) {
                const int32_t s = j + int32_t(rng.below(uint32_t(n - j)));
                std::swap(pos[j], pos[s]);
                uint8_t& c = out.cells[pos[j]];
                c = uint8_t((right.cells[pos[j]] + 1 + rng.below(9)) % 10);
            }
            return true;
        }
        case CAND_SWAP_COLORS: {
            bool seen[10] = {};
            for (uint8_t c : right.cells) seen[c] = true;
            int32_t present[10], n = 0;
            for (int32_t c = 0; c < 10; ++c)
                if (seen[c]) present[n++] = c;
            uint8_t lut[10] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
            if (n >= 2) {
                const int32_t ai = int32_t(rng.below(uint32_t(n)));
                int32_t bi = int32_t(rng.below(uint32_t(n - 1)));
                if (bi >= ai) ++bi;
                std::swap(lut[present[ai]], lut[present[bi]]);
            } else {
                lut[present[0]] = uint8_t((present[0] + 1 + rng.below(9)) % 10);
            }
            out = right;
            for (uint8_t& c : out.cells) c = lut[c];
            return true;
        }
        case CAND_ADD_ROW:
        case CAND_ADD_COL: {
            const bool row = kind == CAND_ADD_ROW;
            const int32_t side = row ? h : w, across = row ? w : h;
            if (side >= max_size) return false;
            const int32_t at = int32_t(rng.below(uint32_t(side + 1)));
            std::vector<uint8_t> line(static_cast<size_t>(across));
            if (rng.below(2) == 0) {
                const int32_t src = at == 0 ? 0 : (at == side ? side - 1 : at - 1 + int32_t(rng.below(2)));
                for (int32_t j = 0; j < across; ++j) line[j] = row ? right.at(src, j) : right.at(j, src);
            } else {
                for (int32_t j = 0; j < across; ++j) line[j] = uint8_t(rng.below(10));
            }
            out.h = row ? h + 1 : h;
            out.w = row ? w : w + 1;
            out.cells.resize(size_t(out.h) * out.w);
            for (int32_t r = 0; r < out.h; ++r)
                for (int32_t c = 0; c < out.w; ++c) {
                    const int32_t i = row ? r : c;  // the index along the side that grew
                    uint8_t v;
                    if (i == at) v = line[row ? c : r];
                    else {
                        const int32_t s = i < at ? i : i - 1;
                        v = row ? right.at(s, c) : right.at(r, s);
                    }
                    out.cells[size_t(r) * out.w + c] = v;
                }
            return true;
        }
        case CAND_DROP_ROW:
        case CAND_DROP_COL: {
            const bool row = kind == CAND_DROP_ROW;
            const int32_t side = row ? h : w;
            if (side <= 1) return false;
            const int32_t at = int32_t(rng.below(uint32_t(side)));
            out.h = row ? h - 1 : h;
            out.w = row ? w : w - 1;
            out.cells.resize(size_t(out.h) * out.w);
            for (int32_t r = 0; r < out.h; ++r)
                for (int32_t c = 0; c < out.w; ++c)
                    out.cells[size_t(r) * out.w + c] =
                        row ? right.at(r < at ? r : r + 1, c) : right.at(r, c < at ? c : c + 1);
            return true;
        }
        case CAND_TRANSFORM: {
            int32_t ok[N_DIHEDRAL], n = 0;
            Grid g;
            for (int32_t t = 1; t < N_DIHEDRAL; ++t) {
                g.h = dihedral_swaps(t) ? w : h;
                g.w = dihedral_swaps(t) ? h : w;
                g.cells.resize(right.cells.size());
                dihedral_map(right.cells.data(), h, w, t, identity_lut(), g.cells.data());
                if (!same_grid(g, right)) ok[n++] = t;
            }
            if (n == 0) return false;
            const int32_t t = ok[rng.below(uint32_t(n))];
            out.h = dihedral_swaps(t) ? w : h;
            out.w = dihedral_swaps(t) ? h : w;
            out.cells.resize(right.cells.size());
            dihedral_map(right.cells.data(), h, w, t, identity_lut(), out.cells.data());
            return true;
        }
        case CAND_INPUT:
            if (same_grid(input, right)) return false;
            out = input;
            return true;
        default: return false;
    }
}

// The candidate of a verify sample whose target is pair `pair`, drawn from the sample's stream
// right after the colours: uniform() < verify_right: the right output; else, when the pair has
// listed wrong predictions, below(2) == 0 picks one of them by below(count); else a corruption of
// kind 2 + below(8), which falls back to `cells` (drawn after) when it cannot apply.
inline void draw_candidate(const TaskData& task, int32_t pair, const SampleCfg& sc, const AugCfg& ac, Rng& rng,
                           Plan& p) {
    const Grid& right = task.outs[pair];
    p.cand_fallback = false;
    if (rng.uniform() < sc.verify_right) {
        p.candidate = right;
        p.cand_kind = CAND_RIGHT;
        return;
    }
    if (!task.wrong.empty() && !task.wrong[pair].empty() && rng.below(2) == 0) {
        const auto& listed = task.wrong[pair];
        p.candidate = listed[rng.below(uint32_t(listed.size()))];
        p.cand_kind = CAND_PREDICTION;
        return;
    }
    int32_t kind = FIRST_CORRUPTION + int32_t(rng.below(N_CORRUPTIONS));
    if (!corrupt(kind, right, task.ins[pair], ac.max_size, rng, p.candidate) || same_grid(p.candidate, right)) {
        kind = CAND_CELLS;
        p.cand_fallback = true;
        corrupt(CAND_CELLS, right, task.ins[pair], ac.max_size, rng, p.candidate);
    }
    p.cand_kind = kind;
}

// One draw of slot (task, index) at the given attempt. Returns false when the prompt cannot fit
// max_len (the caller retries with attempt + 1); counters get only what an accepted draw did.
inline bool draw_plan(const TaskData& task, int32_t task_idx, int64_t index, int32_t attempt, uint64_t seed,
                      const SampleCfg& sc, const AugCfg& ac, Plan& p, Counters& cnt) {
    const uint64_t tk = combine64(seed, task.key);
    const int32_t obj = draw_objective(tk, index, sc);
    const std::vector<int32_t>& pool = objective_pool(task, sc.mode, obj);
    const int32_t n = int32_t(pool.size());
    // Pairs that take turns as the target: all n, or the first n - 1 under the swap-bug ablation.
    const int32_t nt = (sc.swap_bug && obj != OBJ_INPUT && n > 1) ? n - 1 : n;
    p.task = task_idx;
    p.index = index;
    p.attempt = attempt;
    p.objective = obj;
    Rng rng(combine64(combine64(combine64(tk, TAG_SAMPLE), uint64_t(index)), uint64_t(attempt)));
    if (attempt == 0) {
        // Balanced targets: slot index i is position i % n of a fresh permutation of the pool for
        // epoch i / n, so every pair is the target exactly once in each run of n slots (of the
        // objectives sharing that pool: output and verify share one, input has its own).
        int32_t perm[64];
        std::vector<int32_t> big;
        int32_t* pp = perm;
        if (nt > 64) {
            big.resize(nt);
            pp = big.data();
        }
        for (int32_t i = 0; i < nt; ++i) pp[i] = i;
        Rng erng(combine64(combine64(tk, obj == OBJ_INPUT ? TAG_EPOCH_INPUT : TAG_EPOCH), uint64_t(index / nt)));
        shuffle(pp, nt, erng);
        p.target = pp[index % nt];
    } else {
        p.target = int32_t(rng.below(uint32_t(nt)));
    }
    p.pairs.clear();
    for (int32_t i = 0; i < n; ++i)
        if (i != p.target) p.pairs.push_back(i);
    if (ac.shuffle_demos) shuffle(p.pairs.data(), int(p.pairs.size()), rng);
    if (sc.max_demos > 0 && int32_t(p.pairs.size()) > sc.max_demos) p.pairs.resize(sc.max_demos);
    p.pairs.push_back(p.target);

    p.aug = GridAug();
    p.aug.transform = ac.transforms[rng.below(uint32_t(ac.transforms.size()))];
    if (ac.permute_colors) {
        if (rng.uniform() < ac.keep_zero_prob) {
            shuffle(p.aug.colors + 1, 9, rng);
        } else {
            shuffle(p.aug.colors, 10, rng);
        }
    }
    p.cand_kind = CAND_NONE;
    p.cand_fallback = false;
    p.candidate = Grid();
    if (obj == OBJ_VERIFY) draw_candidate(task, pool[p.target], sc, ac, rng, p);
    p.composed.clear();
    bool comp_dropped = false;
    if (ac.comp_prob > 0 && rng.uniform() < ac.comp_prob) {
        Composition c;
        c.side = ac.comp_sides[rng.below(uint32_t(ac.comp_sides.size()))];
        c.kind = ac.comp_kinds[rng.below(uint32_t(ac.comp_kinds.size()))];
        switch (c.kind) {
            case COMP_GEOMETRIC: c.a = 1 + int32_t(rng.below(7)); break;
            case COMP_PAD:
                c.a = 1 + int32_t(rng.below(5));
                c.b = int32_t(rng.below(10));
                break;
            case COMP_UPSCALE: {
                const bool same = rng.below(2) == 0;
                c.a = 2 + int32_t(rng.below(3));
                c.b = same ? c.a : 2 + int32_t(rng.below(3));
                break;
            }
            case COMP_MIRROR:
                c.a = int32_t(rng.below(2));
                c.b = int32_t(rng.below(2));
                break;
        }
        // The grids of the composition's side that the prompt shows (none: an output-side
        // composition of an input sample, kept in the record, composes nothing).
        const bool none = obj == OBJ_INPUT && c.side == SIDE_OUTPUT;
        auto side_grid = [&](size_t i) -> const Grid& {
            const int32_t pi = pool[p.pairs[i]];
            if (c.side == SIDE_INPUT) return task.ins[pi];
            return obj == OBJ_VERIFY && i + 1 == p.pairs.size() ? p.candidate : task.outs[pi];
        };
        bool fits = true;
        for (size_t i = 0; i < p.pairs.size() && !none; ++i) {
            const Grid& g = side_grid(i);
            int32_t oh, ow;
            compose_shape(c, g.h, g.w, oh, ow);
            if (oh > ac.max_size || ow > ac.max_size) fits = false;
        }
        if (fits) {
            p.aug.comp = c;
            if (!none) {
                p.composed.resize(p.pairs.size());
                for (size_t i = 0; i < p.pairs.size(); ++i) compose(c, side_grid(i), p.composed[i]);
            }
        } else {
            comp_dropped = true;
        }
    }

    int64_t len = plan_length(task, pool, p);
    int32_t dropped = 0;
    if (len > sc.max_len) {
        if (sc.on_too_long == SKIP) return false;
        // Drop demonstrations from the end of the (shuffled) order, keeping at least one.
        while (len > sc.max_len && p.n_demos() > 1) {
            const size_t last = p.pairs.size() - 2;
            p.pairs.erase(p.pairs.begin() + last);
            if (!p.composed.empty()) p.composed.erase(p.composed.begin() + last);
            ++dropped;
            len = plan_length(task, pool, p);
        }
        if (len > sc.max_len) return false;
    }
    p.length = int32_t(len);
    p.dropped = dropped;
    cnt.samples += 1;
    cnt.dropped_demos += dropped;
    cnt.trimmed += dropped > 0;
    cnt.compositions += p.aug.comp.active();
    cnt.compositions_dropped += comp_dropped;
    cnt.objective[obj] += 1;
    if (obj == OBJ_VERIFY) {
        cnt.candidate[p.cand_kind] += 1;
        cnt.candidate_fallbacks += p.cand_fallback;
    }
    return true;
}

// Slot (task, index): the first accepted draw over max_attempts attempts. False: an empty slot.
inline bool plan_slot(const TaskData& task, int32_t task_idx, int64_t index, uint64_t seed, const SampleCfg& sc,
                      const AugCfg& ac, Plan& p, Counters& cnt) {
    for (int32_t a = 0; a < sc.max_attempts; ++a) {
        if (draw_plan(task, task_idx, index, a, seed, sc, ac, p, cnt)) return true;
        cnt.skipped += 1;
    }
    cnt.empty_slots += 1;
    return false;
}

// Writes the plan's prompt (p.length tokens) and, when labels is not null, its HF-aligned labels:
// the token itself on the loss positions, -100 elsewhere. `pool` is the objective's pool. Loss:
//   output  the target output's cells, ROWs and EOG (LOSS_OUTPUTS: also every demonstration output
//           but the first);
//   input   the target grid's cells, ROWs and EOG (LOSS_OUTPUTS: also every demonstration grid but
//           the first);
//   verify  the label (YES / NO) after VERDICT only.
inline void write_plan(const TaskData& task, const std::vector<int32_t>& pool, const Plan& p, int32_t loss_on,
                       int32_t* ids, int32_t* labels) {
    int32_t lut[10];
    for (int c = 0; c < 10; ++c) lut[c] = p.aug.colors[c];
    const int t = p.aug.transform;
    int32_t* o = ids;
    *o++ = TOK_BOS;
    if (labels) labels[0] = IGNORE_INDEX;
    const size_t np_ = p.pairs.size();
    // tokens [start, o): a marker then a grid, whose tokens carry loss when `loss`
    auto label = [&](int32_t* start, int32_t* grid_start, bool loss) {
        if (!labels) return;
        int32_t* l = labels + (start - ids);
        const int64_t head = grid_start - start, body = o - grid_start;
        std::fill_n(l, head, IGNORE_INDEX);
        if (loss) std::copy_n(grid_start, body, l + head);
        else std::fill_n(l + head, body, IGNORE_INDEX);
    };
    if (p.objective == OBJ_INPUT) {
        for (size_t i = 0; i < np_; ++i) {
            const Grid& in = plan_input(task, pool, p, i);
            int32_t* start = o;
            *o++ = TOK_INPUT;
            int32_t* grid_start = o;
            o = write_compact(in.cells.data(), in.h, in.w, t, lut, o);
            label(start, grid_start, i + 1 == np_ || (loss_on == LOSS_OUTPUTS && i > 0));
        }
        return;
    }
    const bool verify = p.objective == OBJ_VERIFY;
    for (size_t i = 0; i < np_; ++i) {
        const Grid* in = &task.ins[pool[p.pairs[i]]];
        const Grid* out = &task.outs[pool[p.pairs[i]]];
        if (verify && i + 1 == np_) out = &p.candidate;
        if (p.aug.comp.active()) (p.aug.comp.side == SIDE_INPUT ? in : out) = &p.composed[i];
        int32_t* start = o;
        *o++ = TOK_INPUT;
        o = write_compact(in->cells.data(), in->h, in->w, t, lut, o);
        *o++ = verify && i + 1 == np_ ? TOK_CANDIDATE : TOK_OUTPUT;
        int32_t* grid_start = o;
        o = write_compact(out->cells.data(), out->h, out->w, t, lut, o);
        label(start, grid_start, !verify && (i + 1 == np_ || (loss_on == LOSS_OUTPUTS && i > 0)));
    }
    if (verify) {
        const int32_t verdict = p.cand_kind == CAND_RIGHT ? TOK_YES : TOK_NO;
        *o++ = TOK_VERDICT;
        *o++ = verdict;
        if (labels) {
            labels[o - ids - 2] = IGNORE_INDEX;
            labels[o - ids - 1] = verdict;
        }
    }
}

}  // namespace arcfast
