// The training-data pipeline bound to Python: task store, augmentation of single grids, sample
// drawing, inference prompts, packing, and the streaming sampler (background threads producing
// packed batches into a bounded queue). Hot loops run with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "augment.h"
#include "threads.h"
#include "grid.h"
#include "packing.h"
#include "sampler.h"

namespace py = pybind11;
using namespace arcfast;

namespace {

// ---------------------------------------------------------------------------------------------
// numpy <-> core

Grid grid_from_py(const py::handle& obj, const std::string& where) {
    py::array arr = py::array::ensure(obj);
    if (!arr) throw py::value_error(where + ": not an array");
    if (arr.ndim() != 2) throw py::value_error(where + ": expected a 2-D grid, got " + std::to_string(arr.ndim()) + " dimensions");
    if (arr.dtype().kind() != 'u' && arr.dtype().kind() != 'i')
        throw py::value_error(where + ": expected an integer grid, got dtype " + std::string(py::str(arr.dtype())));
    auto a = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
    Grid g;
    g.h = int32_t(a.shape(0));
    g.w = int32_t(a.shape(1));
    if (g.h < 1 || g.w < 1) throw py::value_error(where + ": empty grid");
    g.cells.resize(size_t(g.h) * g.w);
    const int64_t* p = a.data();
    for (size_t i = 0; i < g.cells.size(); ++i) {
        if (p[i] < 0 || p[i] > 9)
            throw py::value_error(where + ": colour " + std::to_string(p[i]) + " at row " + std::to_string(i / g.w) +
                                  ", column " + std::to_string(i % g.w) + " (colours are 0-9)");
        g.cells[i] = uint8_t(p[i]);
    }
    return g;
}

py::array_t<uint8_t> grid_to_py(const Grid& g) {
    py::array_t<uint8_t> a({py::ssize_t(g.h), py::ssize_t(g.w)});
    std::copy(g.cells.begin(), g.cells.end(), a.mutable_data());
    return a;
}

// Hands a vector to numpy without copying: the array owns it through a capsule.
template <class T>
py::array_t<T> vec_to_py(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
    auto* heap = new std::vector<T>(std::move(v));
    py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
    return py::array_t<T>(shape, heap->data(), owner);
}

// ---------------------------------------------------------------------------------------------
// The task store: tasks copied once into core memory, shared read-only by every worker.

struct TaskStore {
    std::vector<TaskData> tasks;
};

// A task's listed wrong predictions: {pair index: [grid, ...]} (pair index: train i is i, test k is
// n_train + k). A grid equal to the pair's output is not wrong and is dropped.
void read_wrong(const py::dict& d, const std::string& name, TaskData& t) {
    const int32_t n = int32_t(t.ins.size());
    t.wrong.assign(size_t(n), {});
    for (const auto& kv : d) {
        const int64_t i = kv.first.cast<int64_t>();
        if (i < 0 || i >= n)
            throw py::value_error(name + ": wrong predictions for pair " + std::to_string(i) + ", out of range (" +
                                  std::to_string(t.n_train) + " train + " + std::to_string(n - t.n_train) +
                                  " test pairs)");
        const std::string pair = i < t.n_train ? "train[" + std::to_string(i) + "]"
                                               : "test[" + std::to_string(i - t.n_train) + "]";
        if (!t.known[i])
            throw py::value_error(name + ": wrong predictions for pair " + std::to_string(i) + " (" + pair +
                                  "), whose output is unknown");
        int32_t k = 0;
        for (const auto& g : kv.second.cast<py::sequence>()) {
            Grid grid = grid_from_py(g, name + ": wrong prediction " + std::to_string(k) + " of " + pair);
            if (!same_grid(grid, t.outs[i])) t.wrong[i].push_back(std::move(grid));
            ++k;
        }
    }
}

std::shared_ptr<TaskStore> make_store(const py::list& specs) {
    auto store = std::make_shared<TaskStore>();
    store->tasks.reserve(specs.size());
    for (const auto& item : specs) {
        auto spec = item.cast<py::tuple>();
        TaskData t;
        t.id = spec[0].cast<std::string>();
        t.source = spec[1].cast<std::string>();
        t.key = fnv1a64(t.id);
        const std::string name = "task " + t.id + (t.source.empty() ? "" : " (" + t.source + ")");
        auto train = spec[2].cast<py::list>();
        auto test = spec[3].cast<py::list>();
        int32_t k = 0;
        for (const auto& pr : train) {
            auto pair = pr.cast<py::tuple>();
            const std::string at = name + ": train[" + std::to_string(k) + "]";
            if (pair[1].is_none()) throw py::value_error(at + ".output is missing");
            t.ins.push_back(grid_from_py(pair[0], at + ".input"));
            t.outs.push_back(grid_from_py(pair[1], at + ".output"));
            t.known.push_back(1);
            ++k;
        }
        t.n_train = k;
        k = 0;
        for (const auto& pr : test) {
            auto pair = pr.cast<py::tuple>();
            const std::string at = name + ": test[" + std::to_string(k) + "]";
            t.ins.push_back(grid_from_py(pair[0], at + ".input"));
            if (pair[1].is_none()) {
                t.outs.emplace_back();
                t.known.push_back(0);
            } else {
                t.outs.push_back(grid_from_py(pair[1], at + ".output"));
                t.known.push_back(1);
            }
            ++k;
        }
        for (int32_t i = 0; i < int32_t(t.ins.size()); ++i) {
            if (i < t.n_train) t.pool[MODE_TTFT].push_back(i);
            if (t.known[i]) t.pool[MODE_PRETRAIN].push_back(i);
            t.pool_input.push_back(i);
        }
        if (spec.size() > 4 && !spec[4].is_none()) read_wrong(spec[4].cast<py::dict>(), name, t);
        store->tasks.push_back(std::move(t));
    }
    return store;
}

SampleCfg sample_cfg(const py::dict& d) {
    SampleCfg c;
    c.mode = d["mode"].cast<int32_t>();
    c.max_len = d["max_len"].cast<int32_t>();
    c.on_too_long = d["on_too_long"].cast<int32_t>();
    c.loss_on = d["loss_on"].cast<int32_t>();
    c.max_demos = d["max_demos"].cast<int32_t>();
    c.max_attempts = d["max_attempts"].cast<int32_t>();
    if (d.contains("objectives")) {
        const auto w = d["objectives"].cast<std::vector<double>>();
        if (w.size() != N_OBJECTIVES) throw py::value_error("objectives must hold one weight per objective");
        for (int j = 0; j < N_OBJECTIVES; ++j) c.objectives[j] = w[j];
    }
    if (d.contains("verify_right")) c.verify_right = d["verify_right"].cast<double>();
    if (d.contains("swap_bug")) c.swap_bug = d["swap_bug"].cast<bool>();
    return c;
}

AugCfg aug_cfg(const py::dict& d) {
    AugCfg c;
    c.transforms = d["transforms"].cast<std::vector<int32_t>>();
    c.permute_colors = d["permute_colors"].cast<bool>();
    c.keep_zero_prob = d["keep_zero_prob"].cast<double>();
    c.shuffle_demos = d["shuffle_demos"].cast<bool>();
    c.comp_prob = d["composition_prob"].cast<double>();
    c.comp_kinds = d["composition_kinds"].cast<std::vector<int32_t>>();
    c.comp_sides = d["composition_sides"].cast<std::vector<int32_t>>();
    c.max_size = d["max_size"].cast<int32_t>();
    return c;
}

const char* const OBJECTIVE_NAMES[N_OBJECTIVES] = {"output", "input", "verify"};
const char* const CANDIDATE_NAMES[N_CANDIDATE_KINDS] = {"right",    "prediction", "cells",    "swap_colors", "add_row",
                                                        "drop_row", "add_col",    "drop_col", "transform",   "input"};

// Every task must offer a target and at least one demonstration in the pool of every objective
// that has weight.
void check_pools(const TaskStore& s, const SampleCfg& sc) {
    bool any = false;
    for (int j = 0; j < N_OBJECTIVES; ++j) any = any || sc.objectives[j] > 0;
    if (!any) throw py::value_error("objectives: at least one weight must be > 0");
    for (const auto& t : s.tasks)
        for (int32_t j = 0; j < N_OBJECTIVES; ++j) {
            if (!(sc.objectives[j] > 0)) continue;
            const size_t n = objective_pool(t, sc.mode, j).size();
            if (n >= 2) continue;
            const std::string name = "task " + t.id + (t.source.empty() ? "" : " (" + t.source + ")");
            if (j == OBJ_INPUT)
                throw py::value_error(name + ": " + std::to_string(n) +
                                      " input grid(s); the input objective needs at least 2");
            throw py::value_error(name + ": " + std::to_string(n) + " usable pair(s); leave-one-out sampling" +
                                  (j == OBJ_VERIFY ? " (the verify objective)" : "") + " needs at least 2");
        }
}

py::dict counters_to_py(const Counters& c) {
    py::dict d;
    d["drawn"] = c.samples;
    d["skipped"] = c.skipped;
    d["dropped_demos"] = c.dropped_demos;
    d["trimmed"] = c.trimmed;
    d["empty_slots"] = c.empty_slots;
    d["compositions"] = c.compositions;
    d["compositions_dropped"] = c.compositions_dropped;
    for (int j = 0; j < N_OBJECTIVES; ++j) d[py::str(std::string("objective_") + OBJECTIVE_NAMES[j])] = c.objective[j];
    for (int j = 0; j < N_CANDIDATE_KINDS; ++j)
        d[py::str(std::string("candidate_") + CANDIDATE_NAMES[j])] = c.candidate[j];
    d["candidate_fallbacks"] = c.candidate_fallbacks;
    return d;
}

GridAug grid_aug(int32_t transform, const std::vector<int32_t>& colors, const py::object& comp) {
    GridAug a;
    if (transform < 0 || transform >= N_DIHEDRAL) throw py::value_error("transform must be 0-7, got " + std::to_string(transform));
    a.transform = transform;
    if (colors.size() != 10) throw py::value_error("colors must hold 10 entries");
    bool seen[10] = {};
    for (int c = 0; c < 10; ++c) {
        if (colors[c] < 0 || colors[c] > 9 || seen[colors[c]]) throw py::value_error("colors must be a permutation of 0-9");
        seen[colors[c]] = true;
        a.colors[c] = uint8_t(colors[c]);
    }
    if (!comp.is_none()) {
        auto t = comp.cast<std::vector<int32_t>>();
        if (t.size() != 4) throw py::value_error("composition must be (side, kind, a, b)");
        a.comp.side = t[0];
        a.comp.kind = t[1];
        a.comp.a = t[2];
        a.comp.b = t[3];
    }
    return a;
}

py::tuple plan_to_py(const Plan& p) {
    py::object comp = py::none();
    if (p.aug.comp.active()) comp = py::make_tuple(p.aug.comp.side, p.aug.comp.kind, p.aug.comp.a, p.aug.comp.b);
    std::vector<int32_t> colors(p.aug.colors, p.aug.colors + 10);
    py::object cand = py::none();
    if (p.objective == OBJ_VERIFY) cand = grid_to_py(p.candidate);
    return py::make_tuple(p.task, p.index, p.attempt, p.target, p.pairs, p.aug.transform, colors, comp, p.dropped,
                          p.objective, p.cand_kind, cand);
}

// The prompt for test input test_idx under `aug` with the train pairs of `order` as
// demonstrations: BOS (INPUT g OUTPUT g)* INPUT test_in, then OUTPUT (inference), or, with a
// candidate, CANDIDATE cand VERDICT (verification; the candidate augmented as an output grid).
// With max_len > 0, demonstrations are dropped from the end of the order until it fits (keeping
// one); `used` gets the demonstrations kept.
std::vector<int32_t> test_prompt(const TaskData& task, int32_t test_idx, const GridAug& aug,
                                 const std::vector<int32_t>& order, const Grid* candidate, int32_t max_len,
                                 int32_t max_size, std::vector<int32_t>& used) {
    const std::string name = "task " + task.id;
    const int32_t n_test = int32_t(task.ins.size()) - task.n_train;
    if (test_idx < 0 || test_idx >= n_test)
        throw py::value_error(name + ": test index " + std::to_string(test_idx) + " out of range (" +
                              std::to_string(n_test) + " test inputs)");
    used.clear();
    for (int32_t i : order) {
        if (i < 0 || i >= task.n_train)
            throw py::value_error(name + ": demonstration " + std::to_string(i) + " out of range (" +
                                  std::to_string(task.n_train) + " train pairs)");
        used.push_back(i);
    }
    if (used.empty()) throw py::value_error(name + ": an inference prompt needs at least one demonstration");
    const int32_t target = task.n_train + test_idx;
    const Composition& c = aug.comp;
    auto side_grid = [&](int32_t pi) -> const Grid& { return c.side == SIDE_INPUT ? task.ins[pi] : task.outs[pi]; };
    auto check_size = [&](const Grid& g, const std::string& what) {
        int32_t oh, ow;
        compose_shape(c, g.h, g.w, oh, ow);
        if (oh > max_size || ow > max_size)
            throw py::value_error(name + ": the composition makes a " + std::to_string(oh) + "x" +
                                  std::to_string(ow) + " grid" + what + ", over the size limit " +
                                  std::to_string(max_size));
    };
    if (c.active()) {
        std::vector<int32_t> with_target = used;
        if (c.side == SIDE_INPUT) with_target.push_back(target);
        for (int32_t pi : with_target) check_size(side_grid(pi), "");
        if (candidate && c.side == SIDE_OUTPUT) check_size(*candidate, " of the candidate");
    }
    auto grid_of = [&](const Grid& g, int32_t side, Grid& tmp) -> const Grid& {
        if (!c.active() || c.side != side) return g;
        compose(c, g, tmp);
        return tmp;
    };
    const int t = aug.transform;
    Grid tmp, ctmp;
    const Grid& tin = grid_of(task.ins[target], SIDE_INPUT, tmp);
    const Grid* cand = candidate ? &grid_of(*candidate, SIDE_OUTPUT, ctmp) : nullptr;
    int64_t tail = 1 + grid_tokens_after(t, tin.h, tin.w) + 1;
    if (cand) tail += grid_tokens_after(t, cand->h, cand->w) + 1;
    auto demo_len = [&](int32_t pi) {
        Grid a, b;
        const Grid& gi = grid_of(task.ins[pi], SIDE_INPUT, a);
        const Grid& go = grid_of(task.outs[pi], SIDE_OUTPUT, b);
        return 2 + grid_tokens_after(t, gi.h, gi.w) + grid_tokens_after(t, go.h, go.w);
    };
    int64_t len = 1 + tail;
    for (int32_t pi : used) len += demo_len(pi);
    while (max_len > 0 && len > max_len && used.size() > 1) {
        len -= demo_len(used.back());
        used.pop_back();
    }
    if (max_len > 0 && len > max_len)
        throw py::value_error(name + ": test " + std::to_string(test_idx) + ": the prompt takes " +
                              std::to_string(len) + " tokens with one demonstration, over max_len " +
                              std::to_string(max_len));
    int32_t lut[10];
    for (int k = 0; k < 10; ++k) lut[k] = aug.colors[k];
    std::vector<int32_t> ids(len);
    int32_t* o = ids.data();
    *o++ = TOK_BOS;
    for (int32_t pi : used) {
        Grid a, b;
        const Grid& gi = grid_of(task.ins[pi], SIDE_INPUT, a);
        const Grid& go = grid_of(task.outs[pi], SIDE_OUTPUT, b);
        *o++ = TOK_INPUT;
        o = write_compact(gi.cells.data(), gi.h, gi.w, t, lut, o);
        *o++ = TOK_OUTPUT;
        o = write_compact(go.cells.data(), go.h, go.w, t, lut, o);
    }
    *o++ = TOK_INPUT;
    o = write_compact(tin.cells.data(), tin.h, tin.w, t, lut, o);
    if (cand) {
        *o++ = TOK_CANDIDATE;
        o = write_compact(cand->cells.data(), cand->h, cand->w, t, lut, o);
        *o++ = TOK_VERDICT;
    } else {
        *o++ = TOK_OUTPUT;
    }
    return ids;
}

// ---------------------------------------------------------------------------------------------
// Batches

struct Job {
    int64_t b = 0;
    std::vector<Plan> plans;
    std::vector<int32_t> row_of, off_of;
    int32_t rows = 0;
    Counters cnt;
};

struct Ready {
    BatchArrays arrays;
    Counters cnt;
    int64_t samples = 0, tokens = 0;
    bool has_objectives = false;
    std::vector<int32_t> objectives;  // objective id of each sample, in the batch's sample numbering
    std::vector<int32_t> targets;     // the pool index of each sample's target pair (streamed batches)
};

Ready write_job(const TaskStore& s, const SampleCfg& sc, int32_t row_len, Job& job,
                std::shared_ptr<BufferPool> pool) {
    Ready out;
    std::vector<int32_t> lens(job.plans.size()), adapter(job.plans.size());
    for (size_t i = 0; i < job.plans.size(); ++i) {
        lens[i] = job.plans[i].length;
        adapter[i] = job.plans[i].task;
    }
    out.arrays.init(job.rows, row_len, std::move(pool));
    const auto order = placement_order(job.row_of, job.off_of);
    lay_out(out.arrays, order, job.row_of, job.off_of, lens, adapter, [&](int32_t i, int32_t* ids, int32_t* labels) {
        const Plan& p = job.plans[i];
        const TaskData& t = s.tasks[p.task];
        write_plan(t, objective_pool(t, sc.mode, p.objective), p, sc.loss_on, ids, labels);
    });
    out.cnt = job.cnt;
    out.samples = int64_t(order.size());
    out.has_objectives = true;
    for (int32_t i : order) {
        out.tokens += lens[i];
        out.objectives.push_back(job.plans[i].objective);
        out.targets.push_back(job.plans[i].target);
    }
    return out;
}

py::dict batch_to_py(Ready&& r) {
    const py::ssize_t R = r.arrays.rows, L = r.arrays.row_len, N = py::ssize_t(r.arrays.size());
    auto* owner = new PooledBuffer(std::move(r.arrays.buf));
    py::capsule base(owner, [](void* p) { delete static_cast<PooledBuffer*>(p); });
    const int32_t* data = owner->data();
    auto view = [&](int k) { return py::array_t<int32_t>({R, L}, data + k * N, base); };
    py::dict d;
    const py::ssize_t ncu = py::ssize_t(r.arrays.cu.size());
    d["input_ids"] = view(0);
    d["labels"] = view(1);
    d["position_ids"] = view(2);
    d["sample_ids"] = view(3);
    d["adapter_ids"] = view(4);
    d["cu_seqlens"] = vec_to_py(std::move(r.arrays.cu), {ncu});
    if (r.has_objectives) {
        // per sample (index = sample_ids value): its objective id; objective_ids[sample_ids] per token
        const py::ssize_t ns = py::ssize_t(r.objectives.size());
        d["objective_ids"] = vec_to_py(std::move(r.objectives), {ns});
    }
    if (!r.targets.empty()) {
        // per sample, as objective_ids: the pool index of its target (which pair it left out)
        const py::ssize_t nt = py::ssize_t(r.targets.size());
        d["target_ids"] = vec_to_py(std::move(r.targets), {nt});
    }
    py::dict st = counters_to_py(r.cnt);
    st["samples"] = r.samples;
    st["tokens"] = r.tokens;
    st["positions"] = int64_t(R) * L;
    d["stats"] = st;
    return d;
}

// The streaming sampler. Batch b is planned in order under plan_mu (the flat mode's window carries
// samples from batch to batch, so planning is sequential and cheap), then written by whichever
// worker planned it, in parallel with the others; the consumer takes batches strictly in order.
// What a batch holds depends only on the seed and b, never on the thread count.
class Stream {
   public:
    Stream(std::shared_ptr<TaskStore> store, uint64_t seed, SampleCfg sc, AugCfg ac, int32_t row_len, int32_t rows,
           int32_t per_task, int32_t window, int32_t max_wait, int32_t threads, int32_t queue_size)
        : store_(std::move(store)), seed_(seed), sc_(sc), ac_(ac), row_len_(row_len), rows_(rows),
          per_task_(per_task), window_(window), max_wait_(max_wait), queue_size_(std::max(1, queue_size)),
          pool_(std::make_shared<BufferPool>(size_t(queue_size_ + std::max(1, threads) + 4))) {
        check_pools(*store_, sc_);
        if (store_->tasks.empty()) throw py::value_error("the stream needs at least one task");
        const int32_t n = std::max(1, threads);
        for (int32_t i = 0; i < n; ++i) workers_.emplace_back([this] { work(); });
    }
    ~Stream() { close(); }

    void close() {
        {
            std::lock_guard<std::mutex> l(mu_);
            stop_ = true;
            closed_ = true;
        }
        cv_prod_.notify_all();
        cv_cons_.notify_all();
        for (auto& t : workers_)
            if (t.joinable()) t.join();
        workers_.clear();
        std::lock_guard<std::mutex> l(mu_);
        ready_.clear();
    }

    py::dict next() {
        Ready r;
        std::string err;
        {
            py::gil_scoped_release nogil;
            std::unique_lock<std::mutex> l(mu_);
            cv_cons_.wait(l, [&] { return !error_.empty() || stop_ || ready_.count(consumed_); });
            auto it = ready_.find(consumed_);
            if (closed_) {
                err = "the stream is closed";
            } else if (it != ready_.end()) {
                r = std::move(it->second);
                ready_.erase(it);
                ++consumed_;
            } else {
                err = error_.empty() ? "the stream is closed" : error_;
            }
        }
        if (!err.empty()) throw std::runtime_error("packed stream: " + err);
        cv_prod_.notify_all();
        return batch_to_py(std::move(r));
    }

   private:
    void work() {
        try {
            for (;;) {
                Job job;
                {
                    std::lock_guard<std::mutex> pl(plan_mu_);
                    {
                        std::unique_lock<std::mutex> l(mu_);
                        cv_prod_.wait(l, [&] { return stop_ || next_b_ < consumed_ + queue_size_; });
                        if (stop_) return;
                    }
                    plan_next(job);
                }
                Ready r = write_job(*store_, sc_, row_len_, job, pool_);
                {
                    std::lock_guard<std::mutex> l(mu_);
                    ready_[job.b] = std::move(r);
                }
                cv_cons_.notify_all();
            }
        } catch (const std::exception& e) {
            {
                std::lock_guard<std::mutex> l(mu_);
                if (error_.empty()) error_ = e.what();
                stop_ = true;
            }
            cv_cons_.notify_all();
            cv_prod_.notify_all();
        }
    }

    // Called under plan_mu_.
    void plan_next(Job& job) {
        const auto& tasks = store_->tasks;
        const int32_t T = int32_t(tasks.size());
        job.b = next_b_++;
        if (per_task_ > 0) {
            // Every task gets slots b*k .. b*k+k-1, all packed together.
            std::vector<int32_t> lens;
            std::vector<int64_t> keys;
            for (int32_t t = 0; t < T; ++t)
                for (int32_t j = 0; j < per_task_; ++j) {
                    Plan p;
                    const int64_t idx = job.b * per_task_ + j;
                    if (!plan_slot(tasks[t], t, idx, seed_, sc_, ac_, p, job.cnt)) continue;
                    p.seq = (job.b * T + t) * per_task_ + j;
                    lens.push_back(p.length);
                    keys.push_back(p.seq);
                    job.plans.push_back(std::move(p));
                }
            const int32_t need = best_fit_decreasing(lens, keys, row_len_, 0, job.row_of, job.off_of);
            if (rows_ > 0 && need > rows_)
                throw std::runtime_error("batch " + std::to_string(job.b) + " needs " + std::to_string(need) +
                                         " rows of " + std::to_string(row_len_) + " tokens but rows=" +
                                         std::to_string(rows_));
            job.rows = rows_ > 0 ? rows_ : need;
            return;
        }
        // Flat mode: slot q of the stream is sample q / T of task q % T; a window of pending samples
        // is packed into `rows` rows and what does not fit waits for the next batch.
        int64_t empties = 0;
        while (int32_t(pending_.size()) < window_) {
            const int64_t q = next_q_++;
            const int32_t t = int32_t(q % T);
            Plan p;
            if (!plan_slot(tasks[t], t, q / T, seed_, sc_, ac_, p, job.cnt)) {
                // a run of empty slots this long means (almost) nothing fits max_len
                if (++empties > 64 * int64_t(T) + 1000)
                    throw std::runtime_error("no sample of the last " + std::to_string(empties) +
                                             " slots fits max_len=" + std::to_string(sc_.max_len));
                continue;
            }
            p.seq = q;
            p.born = job.b;
            pending_.push_back(std::move(p));
        }
        std::vector<int32_t> lens(pending_.size());
        std::vector<int64_t> keys(pending_.size());
        std::vector<uint8_t> urgent(pending_.size());
        for (size_t i = 0; i < pending_.size(); ++i) {
            lens[i] = pending_[i].length;
            keys[i] = pending_[i].seq;
            urgent[i] = job.b - pending_[i].born >= max_wait_;
        }
        std::vector<int32_t> row_of, off_of;
        best_fit_decreasing(lens, keys, row_len_, rows_, row_of, off_of, &urgent);
        std::deque<Plan> rest;
        for (size_t i = 0; i < pending_.size(); ++i) {
            if (row_of[i] >= 0) {
                job.plans.push_back(std::move(pending_[i]));
                job.row_of.push_back(row_of[i]);
                job.off_of.push_back(off_of[i]);
            } else {
                rest.push_back(std::move(pending_[i]));
            }
        }
        pending_ = std::move(rest);
        job.rows = rows_;
    }

    std::shared_ptr<TaskStore> store_;
    uint64_t seed_;
    SampleCfg sc_;
    AugCfg ac_;
    int32_t row_len_, rows_, per_task_, window_, max_wait_, queue_size_;
    std::shared_ptr<BufferPool> pool_;

    std::mutex plan_mu_;  // planner state below; taken before mu_
    int64_t next_q_ = 0;
    std::deque<Plan> pending_;

    std::mutex mu_;
    std::condition_variable cv_prod_, cv_cons_;
    int64_t next_b_ = 0;  // written under plan_mu_ and read under mu_ by the same planner only
    int64_t consumed_ = 0;
    std::map<int64_t, Ready> ready_;
    bool stop_ = false, closed_ = false;
    std::string error_;
    std::vector<std::thread> workers_;
};

}  // namespace

void init_pipeline(py::module_& m) {
    py::class_<TaskStore, std::shared_ptr<TaskStore>>(m, "TaskStore",
                                                      "Tasks copied into core memory for the sampler (read-only).")
        .def(py::init(&make_store), py::arg("tasks"),
             "tasks: list of (id, source, [(input, output)...train], [(input, output or None)...test]); "
             "grids are 2-D integer arrays of colours 0-9.")
        .def("__len__", [](const TaskStore& s) { return s.tasks.size(); })
        .def("pool_sizes", [](const TaskStore& s, int32_t mode) {
            std::vector<int64_t> n;
            for (const auto& t : s.tasks) n.push_back(int64_t(t.pool[mode].size()));
            return n;
        });

    m.def(
        "augment_grid",
        [](py::object grid, int32_t side, int32_t transform, std::vector<int32_t> colors, py::object comp,
           int32_t max_size) {
            GridAug a = grid_aug(transform, colors, comp);
            Grid g = grid_from_py(grid, "grid"), out;
            if (a.comp.active() && a.comp.side == side) {
                int32_t oh, ow;
                compose_shape(a.comp, g.h, g.w, oh, ow);
                if (oh > max_size || ow > max_size)
                    throw py::value_error("the composition makes a " + std::to_string(oh) + "x" + std::to_string(ow) +
                                          " grid, over the size limit " + std::to_string(max_size));
            }
            augment_grid(a, side, g, out);
            return grid_to_py(out);
        },
        py::arg("grid"), py::arg("side"), py::arg("transform"), py::arg("colors"), py::arg("composition"),
        py::arg("max_size") = DEFAULT_MAX_SIZE,
        "One grid (uint8 [h, w]) through composition (when on `side`), colour map and dihedral transform.");

    m.def(
        "invert_output",
        [](py::object grid, int32_t transform, std::vector<int32_t> colors, py::object comp) -> py::object {
            GridAug a = grid_aug(transform, colors, comp);
            Grid g = grid_from_py(grid, "predicted grid"), out;
            if (!invert_output(a, g, out)) return py::none();
            return grid_to_py(out);
        },
        py::arg("grid"), py::arg("transform"), py::arg("colors"), py::arg("composition"),
        "An output grid predicted in the augmented frame mapped back, or None if it cannot have come from it.");

    m.def(
        "corrupt",
        [](py::object right, py::object input, int32_t kind, int32_t max_size, uint64_t state) -> py::object {
            if (kind < FIRST_CORRUPTION || kind >= N_CANDIDATE_KINDS)
                throw py::value_error("kind must be a corruption id " + std::to_string(FIRST_CORRUPTION) + "-" +
                                      std::to_string(N_CANDIDATE_KINDS - 1) + ", got " + std::to_string(kind));
            const Grid r = grid_from_py(right, "right output"), in = grid_from_py(input, "input");
            Rng rng(state);
            Grid out;
            if (!corrupt(kind, r, in, max_size, rng, out)) return py::none();
            return grid_to_py(out);
        },
        py::arg("right"), py::arg("input"), py::arg("kind"), py::arg("max_size"), py::arg("state"),
        "One synthetic corruption of a right output drawn from Rng(state) (uint8 grid), or None when the kind "
        "cannot apply: the sampler's `corrupt`, for tests.");

    m.def(
        "make_samples",
        [](std::shared_ptr<TaskStore> store, int64_t n_per_task, uint64_t seed, py::dict scd, py::dict acd,
           int32_t threads) {
            const SampleCfg sc = sample_cfg(scd);
            const AugCfg ac = aug_cfg(acd);
            check_pools(*store, sc);
            const int64_t T = int64_t(store->tasks.size()), n = T * n_per_task;
            std::vector<Plan> plans(n);
            std::vector<uint8_t> ok(n, 0);
            std::vector<std::vector<int32_t>> ids(n), labels(n);
            const int32_t nt = threads <= 0 ? int32_t(available_cores()) : threads;
            std::vector<Counters> cnt(nt);
            {
                py::gil_scoped_release nogil;
                parallel_for(n, nt, [&](int64_t i, int32_t w) {
                    const int32_t t = int32_t(i / n_per_task);
                    const TaskData& task = store->tasks[t];
                    if (!plan_slot(task, t, i % n_per_task, seed, sc, ac, plans[i], cnt[w])) return;
                    ok[i] = 1;
                    ids[i].resize(plans[i].length);
                    labels[i].resize(plans[i].length);
                    write_plan(task, objective_pool(task, sc.mode, plans[i].objective), plans[i], sc.loss_on,
                               ids[i].data(), labels[i].data());
                });
            }
            Counters total;
            for (const auto& c : cnt) total.add(c);
            py::list out;
            for (int64_t i = 0; i < n; ++i) {
                if (!ok[i]) continue;
                const py::ssize_t L = py::ssize_t(ids[i].size());
                out.append(py::make_tuple(plan_to_py(plans[i]), vec_to_py(std::move(ids[i]), {L}),
                                          vec_to_py(std::move(labels[i]), {L})));
            }
            return py::make_tuple(out, counters_to_py(total));
        },
        py::arg("store"), py::arg("n_per_task"), py::arg("seed"), py::arg("sample_config"), py::arg("augment_config"),
        py::arg("threads") = 0,
        "Slots 0..n_per_task-1 of every task: list of (plan tuple, ids int32 [L], labels int32 [L]) and counters.");

    m.def(
        "training_prompt",
        [](std::shared_ptr<TaskStore> store, int32_t task_idx, int32_t mode, std::vector<int32_t> demos, int32_t target,
           int32_t transform, std::vector<int32_t> colors, py::object comp, int32_t loss_on, int32_t max_size) {
            const TaskData& task = store->tasks.at(task_idx);
            const auto& pool = task.pool[mode == MODE_PRETRAIN ? MODE_PRETRAIN : MODE_TTFT];
            const int32_t n = int32_t(pool.size());
            Plan p;
            p.aug = grid_aug(transform, colors, comp);
            p.pairs = demos;
            p.pairs.push_back(target);
            for (int32_t i : p.pairs)
                if (i < 0 || i >= n)
                    throw py::value_error("task " + task.id + ": pool index " + std::to_string(i) + " out of range (" +
                                          std::to_string(n) + " pairs)");
            const Composition& c = p.aug.comp;
            if (c.active()) {
                p.composed.resize(p.pairs.size());
                for (size_t i = 0; i < p.pairs.size(); ++i) {
                    const Grid& g = c.side == SIDE_INPUT ? task.ins[pool[p.pairs[i]]] : task.outs[pool[p.pairs[i]]];
                    int32_t oh, ow;
                    compose_shape(c, g.h, g.w, oh, ow);
                    if (oh > max_size || ow > max_size)
                        throw py::value_error("task " + task.id + ": the composition makes a " + std::to_string(oh) +
                                              "x" + std::to_string(ow) + " grid, over the size limit " +
                                              std::to_string(max_size));
                    compose(c, g, p.composed[i]);
                }
            }
            p.length = int32_t(plan_length(task, pool, p));
            std::vector<int32_t> ids(p.length), labels(p.length);
            write_plan(task, pool, p, loss_on, ids.data(), labels.data());
            const py::ssize_t L = p.length;
            return py::make_tuple(vec_to_py(std::move(ids), {L}), vec_to_py(std::move(labels), {L}));
        },
        py::arg("store"), py::arg("task"), py::arg("mode"), py::arg("demos"), py::arg("target"), py::arg("transform"),
        py::arg("colors"), py::arg("composition"), py::arg("loss_on"), py::arg("max_size") = DEFAULT_MAX_SIZE,
        "(ids int32 [L], labels int32 [L]) of the prompt with the given demonstrations and target (pool indices).");

    m.def(
        "inference_prompt",
        [](std::shared_ptr<TaskStore> store, int32_t task_idx, int32_t test_idx, int32_t transform,
           std::vector<int32_t> colors, py::object comp, std::vector<int32_t> order, int32_t max_len,
           int32_t max_size) {
            const TaskData& task = store->tasks.at(task_idx);
            std::vector<int32_t> used;
            std::vector<int32_t> ids =
                test_prompt(task, test_idx, grid_aug(transform, colors, comp), order, nullptr, max_len, max_size, used);
            const py::ssize_t L = py::ssize_t(ids.size());
            return py::make_tuple(vec_to_py(std::move(ids), {L}), py::cast(used));
        },
        py::arg("store"), py::arg("task"), py::arg("test_index"), py::arg("transform"), py::arg("colors"),
        py::arg("composition"), py::arg("order"), py::arg("max_len"), py::arg("max_size") = DEFAULT_MAX_SIZE,
        "(ids int32 [L], demonstrations used): the prompt for a test input, ending with its OUTPUT marker.");

    m.def(
        "verify_prompt",
        [](std::shared_ptr<TaskStore> store, int32_t task_idx, int32_t test_idx, py::object candidate,
           int32_t transform, std::vector<int32_t> colors, py::object comp, std::vector<int32_t> order,
           int32_t max_len, int32_t max_size, int32_t candidate_index) {
            const TaskData& task = store->tasks.at(task_idx);
            const Grid cand = grid_from_py(candidate, "task " + task.id + ": test " + std::to_string(test_idx) +
                                                          ": candidate" +
                                                          (candidate_index < 0 ? "" : " " + std::to_string(candidate_index)));
            std::vector<int32_t> used;
            std::vector<int32_t> ids =
                test_prompt(task, test_idx, grid_aug(transform, colors, comp), order, &cand, max_len, max_size, used);
            const py::ssize_t L = py::ssize_t(ids.size());
            return py::make_tuple(vec_to_py(std::move(ids), {L}), py::cast(used));
        },
        py::arg("store"), py::arg("task"), py::arg("test_index"), py::arg("candidate"), py::arg("transform"),
        py::arg("colors"), py::arg("composition"), py::arg("order"), py::arg("max_len"),
        py::arg("max_size") = DEFAULT_MAX_SIZE, py::arg("candidate_index") = -1,
        "(ids int32 [L], demonstrations used): the verify prompt for a test input and a candidate output, "
        "ending with its VERDICT marker.");

    m.def(
        "best_fit_decreasing",
        [](std::vector<int32_t> lens, std::vector<int64_t> keys, int32_t row_len, int32_t rows) {
            if (keys.size() != lens.size()) throw py::value_error("keys and lengths differ in size");
            std::vector<int32_t> row_of, off_of;
            int32_t n = best_fit_decreasing(lens, keys, row_len, rows, row_of, off_of);
            return py::make_tuple(row_of, off_of, n);
        },
        py::arg("lengths"), py::arg("keys"), py::arg("row_len"), py::arg("rows"),
        "(row of each sample or -1, offset of each, rows used).");

    m.def(
        "pack",
        [](py::array_t<int32_t, py::array::c_style | py::array::forcecast> ids,
           py::array_t<int32_t, py::array::c_style | py::array::forcecast> labels, std::vector<int32_t> lens,
           std::vector<int32_t> adapter, int32_t row_len, int32_t rows, py::object objectives) {
            const size_t n = lens.size();
            if (adapter.size() != n) throw py::value_error("adapter ids and lengths differ in size");
            std::vector<int32_t> obj;
            const bool has_obj = !objectives.is_none();
            if (has_obj) {
                obj = objectives.cast<std::vector<int32_t>>();
                if (obj.size() != n) throw py::value_error("objective ids and lengths differ in size");
            }
            std::vector<int64_t> start(n + 1, 0);
            for (size_t i = 0; i < n; ++i) {
                if (lens[i] < 1 || lens[i] > row_len)
                    throw py::value_error("sample " + std::to_string(i) + " has " + std::to_string(lens[i]) +
                                          " tokens; rows hold " + std::to_string(row_len));
                start[i + 1] = start[i] + lens[i];
            }
            if (ids.size() != start[n] || labels.size() != start[n])
                throw py::value_error("ids/labels do not hold the sum of the lengths");
            Ready r;
            {
                py::gil_scoped_release nogil;
                std::vector<int64_t> keys(n);
                std::iota(keys.begin(), keys.end(), 0);
                std::vector<int32_t> row_of, off_of;
                const int32_t need = best_fit_decreasing(lens, keys, row_len, 0, row_of, off_of);
                if (rows > 0 && need > rows)
                    throw py::value_error("the samples need " + std::to_string(need) + " rows of " +
                                          std::to_string(row_len) + " tokens but rows=" + std::to_string(rows));
                r.arrays.init(rows > 0 ? rows : need, row_len);
                const auto order = placement_order(row_of, off_of);
                const int32_t* pi = ids.data();
                const int32_t* pl = labels.data();
                lay_out(r.arrays, order, row_of, off_of, lens, adapter, [&](int32_t i, int32_t* o, int32_t* l) {
                    std::copy_n(pi + start[i], lens[i], o);
                    std::copy_n(pl + start[i], lens[i], l);
                    l[0] = IGNORE_INDEX;
                });
                r.samples = int64_t(n);
                r.tokens = start[n];
                if (has_obj) {
                    r.has_objectives = true;
                    for (int32_t i : order) r.objectives.push_back(obj[i]);
                }
            }
            return batch_to_py(std::move(r));
        },
        py::arg("ids"), py::arg("labels"), py::arg("lengths"), py::arg("adapter_ids"), py::arg("row_len"),
        py::arg("rows"), py::arg("objective_ids") = py::none(),
        "Packs concatenated samples (int32) by best-fit-decreasing: the PackedBatch arrays (plus objective_ids "
        "per sample when the samples' objective ids are given).");

    py::class_<Stream>(m, "PackedStream", "Background threads producing packed batches into a bounded queue.")
        .def(py::init([](std::shared_ptr<TaskStore> store, uint64_t seed, py::dict scd, py::dict acd, int32_t row_len,
                         int32_t rows, int32_t per_task, int32_t window, int32_t max_wait, int32_t threads,
                         int32_t queue_size) {
                 return std::make_unique<Stream>(store, seed, sample_cfg(scd), aug_cfg(acd), row_len, rows, per_task,
                                                 window, max_wait, threads, queue_size);
             }),
             py::arg("store"), py::arg("seed"), py::arg("sample_config"), py::arg("augment_config"), py::arg("row_len"),
             py::arg("rows"), py::arg("samples_per_task"), py::arg("window"), py::arg("max_wait"), py::arg("threads"),
             py::arg("queue_size"))
        .def("next", &Stream::next, "The next batch: dict of numpy arrays and its stats.")
        .def("close", &Stream::close, py::call_guard<py::gil_scoped_release>());
}
