// arcfast._core bindings for the grid formats (arcfast/arc/formats.py is the documented surface).
//
// Batch calls work in three steps: take every input out of its Python object (GIL held: validate,
// and copy into one flat buffer unless it is an immutable str/bytes or a contiguous numpy array
// of the usual dtype, which is read in place with a reference held, as numpy itself does), encode
// or decode on std::threads over contiguous chunks (GIL released), then build the Python outputs. Per-grid Python objects are made with the raw CPython / NumPy C API: the
// pybind11 wrappers cost more than the encoding itself for an ARC-sized grid.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <sched.h>

#include <algorithm>
#include <exception>
#include <system_error>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "formats.h"
#include "threads.h"

namespace py = pybind11;

namespace arcfast {
namespace {

using npy_api = py::detail::npy_api;
constexpr int MAX_SIZE_LIMIT = 65535;  // any larger limit is a mistake, and keeps h * w in range
constexpr int MAX_THREADS = 1024;

const npy_api& api() {
    static const npy_api& a = npy_api::get();
    return a;
}

[[noreturn]] void throw_python_error() { throw py::error_already_set(); }

// ---------------------------------------------------------------------------------------------
// Small Python helpers

std::string py_str(PyObject* o, bool repr = false) {
    PyObject* s = repr ? PyObject_Repr(o) : PyObject_Str(o);
    if (!s) {
        PyErr_Clear();
        return "?";
    }
    Py_ssize_t n = 0;
    const char* c = PyUnicode_AsUTF8AndSize(s, &n);
    std::string out = c ? std::string(c, size_t(n)) : "?";
    if (!c) PyErr_Clear();
    Py_DECREF(s);
    return out;
}

// The message of the pending Python exception, which is cleared.
std::string take_error_message() {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    std::string msg = value ? py_str(value) : "unknown error";
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return msg;
}

PyObject* numpy_asarray() {
    static PyObject* fn = py::object(py::module_::import("numpy").attr("asarray")).release().ptr();
    return fn;
}

PyObject* new_array(int typenum, int nd, const Py_intptr_t* dims) {
    PyObject* descr = api().PyArray_DescrFromType_(typenum);  // stolen by NewFromDescr
    PyObject* a = api().PyArray_NewFromDescr_(api().PyArray_Type_, descr, nd, dims, nullptr, nullptr, 0, nullptr);
    if (!a) throw_python_error();
    return a;
}

inline char* array_data(PyObject* a) { return py::detail::array_proxy(a)->data; }

// Python-tuple style shape text, as numpy prints it: (), (5,), (2, 3).
std::string shape_str(int nd, const Py_intptr_t* dims) {
    std::string s = "(";
    for (int i = 0; i < nd; ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
    return s + (nd == 1 ? ",)" : ")");
}

// ---------------------------------------------------------------------------------------------
// Integer arrays of any width

enum class IntKind { None, U8, I8, I16, U16, I32, U32, I64, U64 };

IntKind int_kind(int type_num) {
    switch (type_num) {
        case npy_api::NPY_BOOL_:
        case npy_api::NPY_UBYTE_: return IntKind::U8;
        case npy_api::NPY_BYTE_: return IntKind::I8;
        case npy_api::NPY_SHORT_: return IntKind::I16;
        case npy_api::NPY_USHORT_: return IntKind::U16;
        case npy_api::NPY_INT_: return sizeof(int) == 4 ? IntKind::I32 : IntKind::I64;
        case npy_api::NPY_UINT_: return sizeof(int) == 4 ? IntKind::U32 : IntKind::U64;
        case npy_api::NPY_LONG_: return sizeof(long) == 8 ? IntKind::I64 : IntKind::I32;
        case npy_api::NPY_ULONG_: return sizeof(long) == 8 ? IntKind::U64 : IntKind::U32;
        case npy_api::NPY_LONGLONG_: return IntKind::I64;
        case npy_api::NPY_ULONGLONG_: return IntKind::U64;
        default: return IntKind::None;
    }
}

template <class F>
void with_int_type(IntKind k, F&& f) {
    switch (k) {
        case IntKind::U8: f(uint8_t{}); break;
        case IntKind::I8: f(int8_t{}); break;
        case IntKind::I16: f(int16_t{}); break;
        case IntKind::U16: f(uint16_t{}); break;
        case IntKind::I32: f(int32_t{}); break;
        case IntKind::U32: f(uint32_t{}); break;
        case IntKind::I64: f(int64_t{}); break;
        case IntKind::U64: f(uint64_t{}); break;
        case IntKind::None: break;
    }
}

template <class T>
inline int64_t load_int(const char* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    if (std::is_unsigned<T>::value && uint64_t(v) > uint64_t(INT64_MAX)) return INT64_MAX;
    return int64_t(v);
}

struct ArrayView {
    PyObject* obj = nullptr;
    const char* data = nullptr;
    int nd = 0;
    const Py_intptr_t* dims = nullptr;
    const Py_intptr_t* strides = nullptr;
    IntKind kind = IntKind::None;
    bool native = true;
};

bool as_array(PyObject* o, ArrayView* v) {
    if (!api().PyArray_Check_(o)) return false;
    auto* p = py::detail::array_proxy(o);
    auto* d = py::detail::array_descriptor_proxy(p->descr);
    v->obj = o;
    v->data = p->data;
    v->nd = p->nd;
    v->dims = p->dimensions;
    v->strides = p->strides;
    v->kind = int_kind(d->type_num);
    const uint16_t probe = 1;
    const char native_order = *reinterpret_cast<const char*>(&probe) ? '<' : '>';
    v->native = d->byteorder == '=' || d->byteorder == '|' || d->byteorder == native_order;
    return true;
}

// type(o).__name__
std::string type_name(PyObject* o) {
    const char* name = Py_TYPE(o)->tp_name;
    const char* dot = std::strrchr(name, '.');
    return dot ? dot + 1 : name;
}

std::string dtype_str(PyObject* array) { return py_str(py::detail::array_proxy(array)->descr); }

// numpy.asarray(o) or numpy.asarray(o, dtype=...); nullptr with the Python error pending on failure.
PyObject* call_asarray(PyObject* o, const char* dtype = nullptr) {
    if (!dtype) return PyObject_CallFunctionObjArgs(numpy_asarray(), o, nullptr);
    PyObject* dt = PyUnicode_FromString(dtype);
    if (!dt) return nullptr;
    PyObject* a = PyObject_CallFunctionObjArgs(numpy_asarray(), o, dt, nullptr);
    Py_DECREF(dt);
    return a;
}

// ---------------------------------------------------------------------------------------------
// Reading grids (encode inputs). Every reader returns "" or the message of what is wrong, and
// where; the messages match arcfast/reference/formats.py word for word.

struct GridIn {
    const uint8_t* borrowed = nullptr;  // cells inside the caller's array (single calls only)
    size_t off = 0;                     // else: cells at arena[off]
    int32_t h = 0, w = 0;
};

std::string size_error(int64_t h, int64_t w, int32_t max_size) {
    return "grid is " + std::to_string(h) + "x" + std::to_string(w) + ", over the " + std::to_string(max_size) +
           "x" + std::to_string(max_size) + " size limit";
}

std::string colour_error(const std::string& value, int64_t r, int64_t c) {
    return "value " + value + " at row " + std::to_string(r) + ", column " + std::to_string(c) +
           " is not a colour 0-9";
}

std::string read_grid(PyObject* o, int32_t max_size, std::vector<uint8_t>& arena, bool borrow, GridIn* g);

std::string read_array_grid(const ArrayView& a, int32_t max_size, std::vector<uint8_t>& arena, bool borrow,
                            GridIn* g) {
    if (a.nd != 2) return "expected a 2-D grid, got shape " + shape_str(a.nd, a.dims);
    if (a.kind == IntKind::None) return "grid has dtype " + dtype_str(a.obj) + ", not an integer type";
    if (!a.native) {
        PyObject* conv = PyObject_CallMethod(a.obj, "astype", "s", "int64");
        if (!conv) return "grid is not an array of integers: " + take_error_message();
        std::string err = read_grid(conv, max_size, arena, false, g);
        Py_DECREF(conv);
        return err;
    }
    const int64_t h = a.dims[0], w = a.dims[1];
    if (h == 0 || w == 0) return "grid is empty (shape " + shape_str(2, a.dims) + ")";
    if (h > max_size || w > max_size) return size_error(h, w, max_size);
    g->h = int32_t(h);
    g->w = int32_t(w);
    const size_t n = size_t(h * w);
    if (a.kind == IntKind::U8 && a.strides[1] == 1 && a.strides[0] == w) {
        const uint8_t* src = reinterpret_cast<const uint8_t*>(a.data);
        uint8_t hi = 0;
        for (size_t i = 0; i < n; ++i) hi = std::max(hi, src[i]);
        if (hi > 9) {
            const size_t i = size_t(std::find_if(src, src + n, [](uint8_t v) { return v > 9; }) - src);
            return colour_error(std::to_string(src[i]), int64_t(i) / w, int64_t(i) % w);
        }
        if (borrow) {
            g->borrowed = src;
        } else {
            g->off = arena.size();
            arena.insert(arena.end(), src, src + n);
        }
        return "";
    }
    g->off = arena.size();
    arena.resize(g->off + n);
    uint8_t* dst = arena.data() + g->off;
    std::string err;
    with_int_type(a.kind, [&](auto tag) {
        using T = decltype(tag);
        for (int64_t r = 0; r < h; ++r) {
            const char* row = a.data + r * a.strides[0];
            for (int64_t c = 0; c < w; ++c) {
                const int64_t v = load_int<T>(row + c * a.strides[1]);
                if (v < 0 || v > 9) {
                    err = colour_error(std::to_string(v), r, c);
                    return;
                }
                *dst++ = uint8_t(v);
            }
        }
    });
    if (!err.empty()) arena.resize(g->off);
    return err;
}

// Nested lists or tuples of Python ints: read directly (faster than numpy.asarray, and a ragged
// row gets a precise message). Returns false when `o` is not that shape of object.
bool read_list_grid(PyObject* o, int32_t max_size, std::vector<uint8_t>& arena, GridIn* g, std::string* err) {
    if (!PyList_Check(o) && !PyTuple_Check(o)) return false;
    const Py_ssize_t h = PySequence_Fast_GET_SIZE(o);
    PyObject** rows = PySequence_Fast_ITEMS(o);
    for (Py_ssize_t r = 0; r < h; ++r)
        if (!PyList_Check(rows[r]) && !PyTuple_Check(rows[r])) return false;
    if (h == 0) {
        *err = "grid is empty (no rows)";
        return true;
    }
    const Py_ssize_t w = PySequence_Fast_GET_SIZE(rows[0]);
    for (Py_ssize_t r = 1; r < h; ++r) {
        const Py_ssize_t len = PySequence_Fast_GET_SIZE(rows[r]);
        if (len != w) {
            *err = "row " + std::to_string(r) + " has " + std::to_string(len) + " cells but row 0 has " +
                   std::to_string(w);
            return true;
        }
    }
    if (w == 0) {
        *err = "grid is empty (shape (" + std::to_string(h) + ", 0))";
        return true;
    }
    if (h > max_size || w > max_size) {
        *err = size_error(h, w, max_size);
        return true;
    }
    g->h = int32_t(h);
    g->w = int32_t(w);
    g->off = arena.size();
    arena.resize(g->off + size_t(h * w));
    uint8_t* dst = arena.data() + g->off;
    for (Py_ssize_t r = 0; r < h; ++r) {
        PyObject** cells = PySequence_Fast_ITEMS(rows[r]);
        for (Py_ssize_t c = 0; c < w; ++c) {
            PyObject* v = cells[c];
            long long x;
            int overflow = 0;
            if (PyLong_Check(v)) {
                x = PyLong_AsLongLongAndOverflow(v, &overflow);
                if (overflow || x < 0 || x > 9) {
                    *err = colour_error(py_str(v), r, c);
                    arena.resize(g->off);
                    return true;
                }
            } else {
                PyObject* idx = PyNumber_Index(v);
                if (!idx) {
                    PyErr_Clear();
                    *err = py_str(v, true) + " at row " + std::to_string(r) + ", column " + std::to_string(c) +
                           " is not an integer";
                    arena.resize(g->off);
                    return true;
                }
                x = PyLong_AsLongLongAndOverflow(idx, &overflow);
                if (overflow || x < 0 || x > 9) {
                    *err = colour_error(py_str(idx), r, c);
                    Py_DECREF(idx);
                    arena.resize(g->off);
                    return true;
                }
                Py_DECREF(idx);
            }
            *dst++ = uint8_t(x);
        }
    }
    return true;
}

std::string read_grid(PyObject* o, int32_t max_size, std::vector<uint8_t>& arena, bool borrow, GridIn* g) {
    *g = GridIn{};
    ArrayView a;
    if (as_array(o, &a)) return read_array_grid(a, max_size, arena, borrow, g);
    std::string err;
    if (read_list_grid(o, max_size, arena, g, &err)) return err;
    PyObject* conv = call_asarray(o);
    if (!conv) return "grid is not a rectangular array: " + take_error_message();
    as_array(conv, &a);
    err = read_array_grid(a, max_size, arena, false, g);
    Py_DECREF(conv);
    return err;
}

// ---------------------------------------------------------------------------------------------
// Reading decode inputs

// Compact ids from any 1-D integer sequence, appended to `out` as int32 up to and including the
// first EOG (nothing after it is ever read). Ids outside int32 become -1, equally not a token.
void append_ids(PyObject* o, std::vector<int32_t>& out, Py_ssize_t what);

// How an error names the input: "data" for a single call, "items[i]" in a batch (what = i).
std::string what_str(Py_ssize_t what) { return what < 0 ? "data" : "items[" + std::to_string(what) + "]"; }

void append_array_ids(const ArrayView& a, std::vector<int32_t>& out, Py_ssize_t what) {
    if (a.nd != 1)
        throw py::value_error(what_str(what) + ": expected a 1-D sequence of token ids, got shape " +
                              shape_str(a.nd, a.dims));
    if (a.kind == IntKind::None)
        throw py::type_error(what_str(what) + ": token ids must be integers, got dtype " + dtype_str(a.obj));
    if (!a.native) {
        py::object conv = py::reinterpret_steal<py::object>(PyObject_CallMethod(a.obj, "astype", "s", "int64"));
        if (!conv) throw_python_error();
        append_ids(conv.ptr(), out, what);
        return;
    }
    const int64_t n = a.dims[0], stride = a.strides[0];
    if (a.kind == IntKind::I32 && stride == 4) {
        const int32_t* p = reinterpret_cast<const int32_t*>(a.data);
        out.insert(out.end(), p, p + n);  // one memcpy; the decoder stops at the EOG itself
        return;
    }
    with_int_type(a.kind, [&](auto tag) {
        using T = decltype(tag);
        const char* p = a.data;
        for (int64_t i = 0; i < n; ++i, p += stride) {
            const int64_t v = load_int<T>(p);
            out.push_back(v < INT32_MIN || v > INT32_MAX ? -1 : int32_t(v));
            if (v == TOK_EOG) break;
        }
    });
}

void append_ids(PyObject* o, std::vector<int32_t>& out, Py_ssize_t what) {
    ArrayView a;
    if (as_array(o, &a)) return append_array_ids(a, out, what);
    if (PyList_Check(o) || PyTuple_Check(o)) {
        const Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
        PyObject** items = PySequence_Fast_ITEMS(o);
        for (Py_ssize_t i = 0; i < n; ++i) {
            PyObject* v = items[i];
            int overflow = 0;
            long long x;
            if (PyLong_Check(v)) {
                x = PyLong_AsLongLongAndOverflow(v, &overflow);
            } else {
                PyObject* idx = PyNumber_Index(v);
                if (!idx) {
                    PyErr_Clear();
                    throw py::type_error(what_str(what) + ": token " + std::to_string(i) + " is " +
                                         py_str(v, true) + ", not an integer");
                }
                x = PyLong_AsLongLongAndOverflow(idx, &overflow);
                Py_DECREF(idx);
            }
            out.push_back(overflow || x < INT32_MIN || x > INT32_MAX ? -1 : int32_t(x));
            if (!overflow && x == TOK_EOG) break;
        }
        return;
    }
    if (PyUnicode_Check(o) || PyBytes_Check(o) || PyByteArray_Check(o))
        throw py::type_error(what_str(what) + ": the compact format decodes token ids, got " + type_name(o));
    py::object conv = py::reinterpret_steal<py::object>(call_asarray(o));
    if (!conv) throw py::type_error(what_str(what) + ": not a sequence of token ids: " + take_error_message());
    as_array(conv.ptr(), &a);
    append_array_ids(a, out, what);
}

// The UTF-8 bytes of a text item (str, bytes or bytearray). `keep` holds any temporary.
void text_bytes(PyObject* o, const char** s, size_t* n, py::object* keep, Format f, Py_ssize_t what) {
    Py_ssize_t len = 0;
    if (PyUnicode_Check(o)) {
        const char* c = PyUnicode_AsUTF8AndSize(o, &len);
        if (!c) {  // lone surrogates: keep them as bytes, each one then a bad symbol
            PyErr_Clear();
            *keep = py::reinterpret_steal<py::object>(PyUnicode_AsEncodedString(o, "utf-8", "surrogatepass"));
            if (!*keep) throw_python_error();
            c = PyBytes_AS_STRING(keep->ptr());
            len = PyBytes_GET_SIZE(keep->ptr());
        }
        *s = c;
        *n = size_t(len);
    } else if (PyBytes_Check(o)) {
        *s = PyBytes_AS_STRING(o);
        *n = size_t(PyBytes_GET_SIZE(o));
    } else if (PyByteArray_Check(o)) {
        *s = PyByteArray_AS_STRING(o);
        *n = size_t(PyByteArray_GET_SIZE(o));
    } else {
        throw py::type_error(what_str(what) + ": the " + format_name(f) + " format decodes str or bytes, got " +
                             type_name(o));
    }
}

// ---------------------------------------------------------------------------------------------
// Arguments

Format parse_format(PyObject* o) {
    Py_ssize_t n = 0;
    const char* s = PyUnicode_Check(o) ? PyUnicode_AsUTF8AndSize(o, &n) : nullptr;
    if (!s) PyErr_Clear();
    Format f;
    if (!s || !format_from_name(s, size_t(n), &f))
        throw py::value_error("unknown format " + py_str(o, true) +
                              "; known formats: compact, minimal, row-number, code-block, shape-row-number");
    return f;
}

void check_max_size(int max_size) {
    if (max_size < 1 || max_size > MAX_SIZE_LIMIT)
        throw py::value_error("max_size must be in 1.." + std::to_string(MAX_SIZE_LIMIT) + ", got " +
                              std::to_string(max_size));
}

int resolve_threads(int threads) {
    if (threads < 0) throw py::value_error("threads must be >= 0 (0 = all cores), got " + std::to_string(threads));
    return threads == 0 ? available_cores() : std::min(threads, MAX_THREADS);
}

// Python status objects (members of arcfast.arc.formats.DecodeStatus), fetched once and kept.
PyObject* g_status[NUM_STATUSES] = {};

void load_statuses() {
    if (g_status[0]) return;
    py::object cls = py::module_::import("arcfast.arc.formats").attr("DecodeStatus");
    for (int i = 0; i < NUM_STATUSES; ++i) g_status[i] = cls(py::str(status_name(Status(i)))).release().ptr();
}

PyObject* steal_or_throw(PyObject* o) {
    if (!o) throw_python_error();
    return o;
}

// ---------------------------------------------------------------------------------------------
// Threads

// Below this many cells or tokens a batch is not worth a thread start (~30 us each).
constexpr int64_t PARALLEL_MIN_WORK = 1 << 16;
constexpr int64_t RELEASE_GIL_MIN_WORK = 1 << 13;

// Runs fn(chunk, begin, end) over `threads` contiguous chunks of items [0, n) holding about equal
// shares of the work (cum[i] = work before item i, cum.size() == n + 1). Returns the chunk bounds.
template <class F>
std::vector<size_t> run_chunks(const std::vector<int64_t>& cum, int threads, F&& fn) {
    const size_t n = cum.size() - 1;
    const int64_t total = cum.back();
    int t = int(std::min<int64_t>({int64_t(threads), int64_t(n), std::max<int64_t>(1, total / (PARALLEL_MIN_WORK / 4))}));
    if (total < PARALLEL_MIN_WORK) t = 1;
    t = std::max(t, 1);
    std::vector<size_t> bounds(size_t(t) + 1, n);
    bounds[0] = 0;
    for (int k = 1; k < t; ++k)
        bounds[size_t(k)] = size_t(std::lower_bound(cum.begin(), cum.end(), total * k / t) - cum.begin());
    if (t == 1) {
        if (total >= RELEASE_GIL_MIN_WORK) {
            py::gil_scoped_release nogil;
            fn(0, size_t(0), n);
        } else {
            fn(0, size_t(0), n);
        }
        return bounds;
    }
    {
        py::gil_scoped_release nogil;
        run_workers(t, [&](int k) { fn(k, bounds[size_t(k)], bounds[size_t(k) + 1]); });
    }
    return bounds;
}

// ---------------------------------------------------------------------------------------------
// Outputs

// A new output object for an encoded grid (int32 array or ASCII str) and where to write into it.
PyObject* alloc_encoded(Format f, int32_t h, int32_t w, void** buf) {
    const int64_t len = encoded_len(f, h, w);
    if (f == Format::Compact) {
        const Py_intptr_t dims[1] = {Py_intptr_t(len)};
        PyObject* a = new_array(npy_api::NPY_INT32_, 1, dims);
        *buf = array_data(a);
        return a;
    }
    PyObject* s = steal_or_throw(PyUnicode_New(Py_ssize_t(len), 127));
    *buf = PyUnicode_1BYTE_DATA(s);
    return s;
}

void write_encoded(Format f, const uint8_t* cells, int32_t h, int32_t w, void* buf) {
    if (f == Format::Compact)
        write_compact(cells, h, w, static_cast<int32_t*>(buf));
    else
        write_text(f, cells, h, w, static_cast<char*>(buf));
}

// (grid or None, status) for one decoded item.
PyObject* decoded_pair(const Decoded& d, const uint8_t* cells) {
    PyObject* grid;
    if (d.status == Status::Ok) {
        const Py_intptr_t dims[2] = {d.h, d.w};
        grid = new_array(npy_api::NPY_UBYTE_, 2, dims);
        std::memcpy(array_data(grid), cells, size_t(d.h) * size_t(d.w));
    } else {
        grid = Py_None;
        Py_INCREF(grid);
    }
    PyObject* st = g_status[int(d.status)];
    Py_INCREF(st);
    PyObject* t = PyTuple_New(2);
    if (!t) {
        Py_DECREF(grid);
        Py_DECREF(st);
        throw_python_error();
    }
    PyTuple_SET_ITEM(t, 0, grid);
    PyTuple_SET_ITEM(t, 1, st);
    // The pair holds a uint8 array and an enum member kept alive by its class: it can never be
    // part of a reference cycle. Left tracked, the pairs of a 7,000-grid batch cost the cyclic GC
    // ~150 ns each (measured with a parsed ARC JSON file alive in the process), about as much as
    // decoding them.
    PyObject_GC_UnTrack(t);
    return t;
}

// ---------------------------------------------------------------------------------------------
// The bound functions

py::object encode(py::handle grid, py::handle fmt, int max_size) {
    const Format f = parse_format(fmt.ptr());
    check_max_size(max_size);
    thread_local std::vector<uint8_t> arena;
    arena.clear();
    GridIn g;
    const std::string err = read_grid(grid.ptr(), max_size, arena, true, &g);
    if (!err.empty()) throw py::value_error("invalid grid: " + err);
    void* buf = nullptr;
    py::object out = py::reinterpret_steal<py::object>(alloc_encoded(f, g.h, g.w, &buf));
    write_encoded(f, g.borrowed ? g.borrowed : arena.data() + g.off, g.h, g.w, buf);
    return out;
}

// One item of a decode batch: `n` ids or bytes, read in place from an array or str the batch holds
// a reference to (`ext`), or else copied into the batch's own buffer at `off`.
struct Span {
    const char* ext = nullptr;
    size_t off = 0, n = 0;
    uint8_t width = 4;  // bytes per element: 1 text, 4 int32 ids, 8 int64 ids
};

// Points `s` at a contiguous int32 or int64 id array in place; false for anything else.
bool ids_in_place(const ArrayView& a, Span* s) {
    if (a.nd != 1 || !a.native) return false;
    if (!((a.kind == IntKind::I32 && a.strides[0] == 4) || (a.kind == IntKind::I64 && a.strides[0] == 8)))
        return false;
    s->ext = a.data;
    s->n = size_t(a.dims[0]);
    s->width = a.kind == IntKind::I32 ? 4 : 8;
    return true;
}

// The items of a batch as a sequence that owns a reference to each: a list is copied (a shallow
// slice), so a caller changing it on another thread cannot free a buffer being read.
py::object snapshot(py::handle items, const char* msg) {
    PyObject* s = PyList_Check(items.ptr()) ? PyList_GetSlice(items.ptr(), 0, PY_SSIZE_T_MAX)
                                            : PySequence_Fast(items.ptr(), msg);
    if (!s) throw_python_error();
    return py::reinterpret_steal<py::object>(s);
}

// Reads and validates every grid of `grids` (ValueError naming the index of the first invalid
// one): C-contiguous uint8 arrays are read in place later, anything else is copied to the arena.
struct GridBatch {
    std::vector<uint8_t> arena;
    std::vector<GridIn> grids;
    py::object seq;  // owns a reference to every grid
    Py_ssize_t n = 0;
    PyObject** items = nullptr;
};

void read_grid_batch(py::handle grids, int32_t max_size, GridBatch* b) {
    b->seq = snapshot(grids, "grids must be a sequence of grids");
    b->n = PySequence_Fast_GET_SIZE(b->seq.ptr());
    b->items = PySequence_Fast_ITEMS(b->seq.ptr());
    b->grids.resize(size_t(b->n));
    for (Py_ssize_t i = 0; i < b->n; ++i) {
        const std::string err = read_grid(b->items[i], max_size, b->arena, true, &b->grids[size_t(i)]);
        if (!err.empty()) throw py::value_error("invalid grid at index " + std::to_string(i) + ": " + err);
    }
}

py::list encode_batch(py::handle grids, py::handle fmt, int threads, int max_size) {
    const Format f = parse_format(fmt.ptr());
    check_max_size(max_size);
    threads = resolve_threads(threads);
    GridBatch b;
    read_grid_batch(grids, max_size, &b);
    const size_t n = size_t(b.n);
    py::list out = py::reinterpret_steal<py::list>(steal_or_throw(PyList_New(b.n)));
    std::vector<void*> bufs(n);
    std::vector<int64_t> cum(n + 1, 0);
    for (size_t i = 0; i < n; ++i) {
        const GridIn& g = b.grids[i];
        PyList_SET_ITEM(out.ptr(), Py_ssize_t(i), alloc_encoded(f, g.h, g.w, &bufs[i]));
        cum[i + 1] = cum[i] + int64_t(g.h) * g.w;
    }
    const uint8_t* arena = b.arena.data();
    run_chunks(cum, threads, [&](int, size_t lo, size_t hi) {
        for (size_t i = lo; i < hi; ++i) {
            const GridIn& g = b.grids[i];
            write_encoded(f, g.borrowed ? g.borrowed : arena + g.off, g.h, g.w, bufs[i]);
        }
    });
    return out;
}

py::tuple encode_compact_flat(py::handle grids, int threads, int max_size) {
    check_max_size(max_size);
    threads = resolve_threads(threads);
    GridBatch b;
    read_grid_batch(grids, max_size, &b);
    const size_t n = size_t(b.n);
    const Py_intptr_t odims[1] = {Py_intptr_t(n + 1)};
    py::object offsets = py::reinterpret_steal<py::object>(new_array(npy_api::NPY_INT64_, 1, odims));
    int64_t* off = reinterpret_cast<int64_t*>(array_data(offsets.ptr()));
    std::vector<int64_t> cum(n + 1, 0);
    off[0] = 0;
    for (size_t i = 0; i < n; ++i) {
        const GridIn& g = b.grids[i];
        off[i + 1] = off[i] + compact_grid_len(g.h, g.w);
        cum[i + 1] = cum[i] + int64_t(g.h) * g.w;
    }
    const Py_intptr_t idims[1] = {Py_intptr_t(off[n])};
    py::object ids = py::reinterpret_steal<py::object>(new_array(npy_api::NPY_INT32_, 1, idims));
    int32_t* dst = reinterpret_cast<int32_t*>(array_data(ids.ptr()));
    const uint8_t* arena = b.arena.data();
    run_chunks(cum, threads, [&](int, size_t lo, size_t hi) {
        for (size_t i = lo; i < hi; ++i) {
            const GridIn& g = b.grids[i];
            write_compact(g.borrowed ? g.borrowed : arena + g.off, g.h, g.w, dst + off[i]);
        }
    });
    return py::make_tuple(ids, offsets);
}

py::tuple decode(py::handle data, py::handle fmt, int max_size) {
    const Format f = parse_format(fmt.ptr());
    check_max_size(max_size);
    load_statuses();
    thread_local std::vector<uint8_t> cells;
    cells.clear();
    Decoded d;
    if (f == Format::Compact) {
        ArrayView a;
        // Contiguous int32 / int64 arrays (what samplers and torch produce) are read in place.
        if (as_array(data.ptr(), &a) && a.nd == 1 && a.native &&
            ((a.kind == IntKind::I32 && a.strides[0] == 4) || (a.kind == IntKind::I64 && a.strides[0] == 8))) {
            d = a.kind == IntKind::I32
                    ? decode_compact(reinterpret_cast<const int32_t*>(a.data), size_t(a.dims[0]), max_size, cells)
                    : decode_compact(reinterpret_cast<const int64_t*>(a.data), size_t(a.dims[0]), max_size, cells);
        } else {
            thread_local std::vector<int32_t> ids;
            ids.clear();
            append_ids(data.ptr(), ids, -1);
            d = decode_compact(ids.data(), ids.size(), max_size, cells);
        }
    } else {
        const char* s = nullptr;
        size_t n = 0;
        py::object keep;
        text_bytes(data.ptr(), &s, &n, &keep, f, -1);
        d = decode_text(f, s, n, max_size, cells);
    }
    return py::reinterpret_steal<py::tuple>(decoded_pair(d, cells.data()));
}

py::list decode_batch(py::handle items, py::handle fmt, int threads, int max_size) {
    const Format f = parse_format(fmt.ptr());
    check_max_size(max_size);
    threads = resolve_threads(threads);
    load_statuses();
    // 1. Take every item out of Python: immutable str/bytes and contiguous int32/int64 arrays are
    //    read in place (references held, as numpy does when it releases the GIL); anything else
    //    is copied, as int32 ids (compact) or bytes (text), into one buffer.
    std::vector<int32_t> ids;
    std::vector<char> text;
    std::vector<Span> spans;
    std::vector<py::object> temps;
    py::object seq;
    ArrayView a;
    if (f == Format::Compact && as_array(items.ptr(), &a) && a.nd == 2) {
        // One output per row, e.g. generations padded after their EOG.
        if (a.kind == IntKind::None)
            throw py::type_error("items: token ids must be integers, got dtype " + dtype_str(a.obj));
        if (!a.native) {
            temps.push_back(py::reinterpret_steal<py::object>(PyObject_CallMethod(a.obj, "astype", "s", "int64")));
            if (!temps.back()) throw_python_error();
            as_array(temps.back().ptr(), &a);
        }
        const int64_t rows = a.dims[0], len = a.dims[1];
        spans.resize(size_t(rows));
        const bool in_place = (a.kind == IntKind::I32 && a.strides[1] == 4) ||
                              (a.kind == IntKind::I64 && a.strides[1] == 8);
        with_int_type(a.kind, [&](auto tag) {
            using T = decltype(tag);
            for (int64_t r = 0; r < rows; ++r) {
                const char* p = a.data + r * a.strides[0];
                Span& s = spans[size_t(r)];
                if (in_place) {
                    s.ext = p;
                    s.n = size_t(len);
                    s.width = uint8_t(sizeof(T));
                    continue;
                }
                s.off = ids.size();
                for (int64_t i = 0; i < len; ++i, p += a.strides[1]) {
                    const int64_t v = load_int<T>(p);
                    ids.push_back(v < INT32_MIN || v > INT32_MAX ? -1 : int32_t(v));
                    if (v == TOK_EOG) break;
                }
                s.n = ids.size() - s.off;
            }
        });
    } else {
        seq = snapshot(items, "items must be a sequence of model outputs");
        const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr());
        PyObject** objs = PySequence_Fast_ITEMS(seq.ptr());
        spans.resize(size_t(n));
        for (Py_ssize_t i = 0; i < n; ++i) {
            Span& s = spans[size_t(i)];
            if (f == Format::Compact) {
                if (as_array(objs[i], &a) && ids_in_place(a, &s)) continue;
                s.off = ids.size();
                append_ids(objs[i], ids, i);
                s.n = ids.size() - s.off;
            } else {
                const char* p = nullptr;
                py::object keep;
                text_bytes(objs[i], &p, &s.n, &keep, f, i);
                s.width = 1;
                if (PyByteArray_Check(objs[i])) {  // mutable: copy
                    s.off = text.size();
                    text.insert(text.end(), p, p + s.n);
                } else {
                    s.ext = p;
                    if (keep) temps.push_back(std::move(keep));
                }
            }
        }
    }
    const size_t n = spans.size();
    std::vector<int64_t> cum(n + 1, 0);
    for (size_t i = 0; i < n; ++i) {
        Span& s = spans[i];
        if (!s.ext) s.ext = s.width == 1 ? text.data() + s.off : reinterpret_cast<const char*>(ids.data() + s.off);
        cum[i + 1] = cum[i] + int64_t(s.n);
    }

    // 2. Decode on threads, each chunk into its own cell buffer.
    struct Result {
        Decoded d;
        size_t off = 0;
    };
    std::vector<Result> res(n);
    std::vector<std::vector<uint8_t>> chunk_cells(size_t(std::max(threads, 1)));
    const std::vector<size_t> bounds = run_chunks(cum, threads, [&](int k, size_t lo, size_t hi) {
        std::vector<uint8_t>& cells = chunk_cells[size_t(k)];
        cells.reserve(size_t(cum[hi] - cum[lo]));  // a grid has fewer cells than tokens or bytes: never regrows
        for (size_t i = lo; i < hi; ++i) {
            const Span& s = spans[i];
            res[i].off = cells.size();
            if (s.width == 1)
                res[i].d = decode_text(f, s.ext, s.n, max_size, cells);
            else if (s.width == 4)
                res[i].d = decode_compact(reinterpret_cast<const int32_t*>(s.ext), s.n, max_size, cells);
            else
                res[i].d = decode_compact(reinterpret_cast<const int64_t*>(s.ext), s.n, max_size, cells);
        }
    });

    // 3. Python outputs.
    py::list out = py::reinterpret_steal<py::list>(steal_or_throw(PyList_New(Py_ssize_t(n))));
    for (size_t k = 0; k + 1 < bounds.size(); ++k) {
        const uint8_t* cells = chunk_cells[k].data();
        for (size_t i = bounds[k]; i < bounds[k + 1]; ++i)
            PyList_SET_ITEM(out.ptr(), Py_ssize_t(i), decoded_pair(res[i].d, cells + res[i].off));
    }
    return out;
}

}  // namespace
}  // namespace arcfast

void init_formats(py::module_& m) {
    using namespace arcfast;
    m.def("encode", &encode, py::arg("grid"), py::arg("fmt") = "compact", py::arg("max_size") = DEFAULT_MAX_SIZE,
          "Encodes one grid: int32 [h*(w+1)+1] array (compact) or str (text formats). See arcfast.arc.formats.");
    m.def("decode", &decode, py::arg("data"), py::arg("fmt") = "compact", py::arg("max_size") = DEFAULT_MAX_SIZE,
          "Decodes one model output: (uint8 [h, w] array or None, DecodeStatus). See arcfast.arc.formats.");
    m.def("available_cores", &available_cores,
          "Cores this process may run on (its CPU affinity): what threads=0 means everywhere in the core.");
    m.def("encode_batch", &encode_batch, py::arg("grids"), py::arg("fmt") = "compact", py::arg("threads") = 0,
          py::arg("max_size") = DEFAULT_MAX_SIZE, "Encodes many grids on threads. See arcfast.arc.formats.");
    m.def("decode_batch", &decode_batch, py::arg("items"), py::arg("fmt") = "compact", py::arg("threads") = 0,
          py::arg("max_size") = DEFAULT_MAX_SIZE, "Decodes many model outputs on threads. See arcfast.arc.formats.");
    m.def("encode_compact_flat", &encode_compact_flat, py::arg("grids"), py::arg("threads") = 0,
          py::arg("max_size") = DEFAULT_MAX_SIZE,
          "Encodes many grids into one int32 array plus int64 offsets [n+1]. See arcfast.arc.formats.");
    m.attr("FORMAT_NAMES") = py::make_tuple("compact", "minimal", "row-number", "code-block", "shape-row-number");
    m.attr("STATUS_NAMES") = py::make_tuple("ok", "bad_symbol", "ragged", "empty", "too_big", "shape_mismatch",
                                            "unterminated");
}
