/*
 * flux_proxy._scan: the frame-boundary scans of the proxies' hot path, in C.
 *
 * The pure-Python scanners in flux_proxy/pg/codec.py and flux_proxy/resp/codec.py are the
 * reference; these functions produce exactly their frames for well-formed input, and hand
 * anything unusual (an error, an oversized number) back to them by returning a "bail" result.
 * The Python side then re-runs its own scan from the same state, so error messages and limits
 * live in one place. Tests compare both implementations on random and captured streams.
 *
 * Sans-IO like the rest of the codecs: bytes in, lists of bytes out, no state kept here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>

/* Bytes of buf[start:stop], reusing buf itself when the slice is all of it. */
static PyObject *
slice(PyObject *buf, const char *data, Py_ssize_t size, Py_ssize_t start, Py_ssize_t stop)
{
    if (start == 0 && stop == size) {
        Py_INCREF(buf);
        return buf;
    }
    return PyBytes_FromStringAndSize(data + start, stop - start);
}

static int
append_new(PyObject *list, PyObject *item)
{
    if (item == NULL)
        return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

/* Index of the first CRLF at or after `from`, or -1. */
static Py_ssize_t
find_crlf(const char *data, Py_ssize_t size, Py_ssize_t from)
{
    while (from + 1 < size) {
        const char *cr = memchr(data + from, '\r', (size_t)(size - from - 1));
        if (cr == NULL)
            return -1;
        Py_ssize_t at = cr - data;
        if (data[at + 1] == '\n')
            return at;
        from = at + 1;
    }
    return -1;
}

/* Decimal digits data[from:to] (Python's bytes.isdigit(): non-empty, ASCII digits only) as a
 * number; -1 when they are not such digits or are 19 or more (the Python side decides). */
static long long
digits_value(const char *data, Py_ssize_t from, Py_ssize_t to)
{
    Py_ssize_t n = to - from;
    if (n <= 0 || n >= 19)
        return -1;
    long long value = 0;
    for (Py_ssize_t i = from; i < to; i++) {
        unsigned char c = (unsigned char)data[i];
        if (c < '0' || c > '9')
            return -1;
        value = value * 10 + (c - '0');
    }
    return value;
}

/* ---------------------------------------------------------------- Postgres */

/* The whole, valid frames at the start of data[0:size], header by header: calls visit(arg,
 * frame, its size) for each and returns where they end; *need gets the bytes the next frame
 * needs from there (5 when unknown), or -1 when its header is bad. pg_split and the whole-read
 * scans share it, so they accept exactly the same frames. */
static Py_ssize_t
walk_frames(const char *data, Py_ssize_t size, const unsigned char *valid, long long limit,
            Py_ssize_t *need, void (*visit)(void *, const char *, Py_ssize_t), void *arg)
{
    Py_ssize_t pos = 0;
    *need = 5;
    while (pos + 5 <= size) {
        const unsigned char *h = (const unsigned char *)data + pos;
        unsigned long long length = ((unsigned long long)h[1] << 24) | (h[2] << 16)
                                    | (h[3] << 8) | h[4];
        if (!valid[h[0]] || length < 4 || (long long)length > limit) {
            *need = -1;
            break;
        }
        Py_ssize_t stop = pos + 1 + (Py_ssize_t)length;
        if (stop > size) {
            *need = stop - pos;
            break;
        }
        visit(arg, data + pos, stop - pos);
        pos = stop;
    }
    return pos;
}

static void
count_frame(void *count, const char *frame, Py_ssize_t size)
{
    (*(Py_ssize_t *)count)++;
}

PyDoc_STRVAR(pg_split_doc,
"pg_split(buf, valid, limit) -> (frames, pos, need)\n\n"
"Complete typed messages at the start of `buf`. `valid` is 256 bytes, non-zero for each\n"
"accepted type byte; `limit` the largest length field. `pos` is where the unconsumed rest\n"
"begins and `need` how many bytes the next frame needs from there (5 when unknown), or -1\n"
"when the header at `pos` is bad (the caller raises).");

static PyObject *
pg_split(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[1])
            || PyBytes_GET_SIZE(args[1]) != 256) {
        PyErr_SetString(PyExc_TypeError, "pg_split(bytes, bytes[256], int)");
        return NULL;
    }
    PyObject *buf = args[0];
    const unsigned char *valid = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    long long limit = PyLong_AsLongLong(args[2]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    const char *data = PyBytes_AS_STRING(buf);
    Py_ssize_t size = PyBytes_GET_SIZE(buf);
    /* Headers first, so the list is made at its size; then the frames. */
    Py_ssize_t need, count = 0;
    Py_ssize_t pos = walk_frames(data, size, valid, limit, &need, count_frame, &count);
    PyObject *frames = PyList_New(count);
    if (frames == NULL)
        return NULL;
    Py_ssize_t at = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        const unsigned char *h = (const unsigned char *)data + at;
        Py_ssize_t stop = at + 5 + (Py_ssize_t)(((size_t)h[1] << 24) | (h[2] << 16)
                                                | (h[3] << 8) | h[4]) - 4;
        PyObject *frame = slice(buf, data, size, at, stop);
        if (frame == NULL) {
            Py_DECREF(frames);
            return NULL;
        }
        PyList_SET_ITEM(frames, i, frame);
        at = stop;
    }
    PyObject *result = PyTuple_New(3);
    PyObject *pos_object = PyLong_FromSsize_t(pos);
    PyObject *need_object = PyLong_FromSsize_t(need);
    if (result == NULL || pos_object == NULL || need_object == NULL) {
        Py_XDECREF(result);
        Py_XDECREF(pos_object);
        Py_XDECREF(need_object);
        Py_DECREF(frames);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, frames);
    PyTuple_SET_ITEM(result, 1, pos_object);
    PyTuple_SET_ITEM(result, 2, need_object);
    return result;
}

PyDoc_STRVAR(pg_batch_shape_doc,
"pg_batch_shape(frames) -> int\n\n"
"What a read of frontend frames is, for the session's fast path: 0 when it is not one\n"
"extended-protocol batch ([Parse|Bind|Describe|Close]* Execute Sync), 1 when it is, 2 when\n"
"it is exactly an unnamed Parse, Bind, Describe (portal), Execute and Sync, 3 when it is\n"
"that and the Parse mentions pg_type, and 4 when it is one simple Query.\n"
"`flux_proxy.pg.session.batch_shape_reference` is the reference.");

/* Whether data[from:size] contains needle (memmem without _GNU_SOURCE). */
static int
contains(const char *data, Py_ssize_t size, Py_ssize_t from, const char *needle, Py_ssize_t n)
{
    while (from + n <= size) {
        const char *hit = memchr(data + from, needle[0], (size_t)(size - from - n + 1));
        if (hit == NULL)
            return 0;
        if (memcmp(hit, needle, (size_t)n) == 0)
            return 1;
        from = hit - data + 1;
    }
    return 0;
}

/* A read's frames as the shape classifier sees them, one frame at a time. */
typedef struct {
    Py_ssize_t n;  /* frames so far */
    Py_ssize_t others;  /* frames that are not Parse, Bind, Describe or Close */
    char before_last, last;
    const char *data[5];
    Py_ssize_t size[5];
} Shape;

static void
shape_add(Shape *shape, const char *data, Py_ssize_t size)
{
    char t = data[0];
    if (shape->n < 5) {
        shape->data[shape->n] = data;
        shape->size[shape->n] = size;
    }
    shape->n++;
    shape->others += !(t == 'P' || t == 'B' || t == 'D' || t == 'C');
    shape->before_last = shape->last;
    shape->last = t;
}

static long
shape_result(const Shape *shape)
{
    const char *const *data = shape->data;
    const Py_ssize_t *size = shape->size;
    if (shape->n == 1 && shape->last == 'Q')
        return 4;
    if (shape->n < 2 || shape->last != 'S' || shape->before_last != 'E' || shape->others != 2)
        return 0;
    if (shape->n != 5 || size[0] < 6 || size[1] < 7 || size[2] < 7 || size[3] < 6)
        return 1;
    if (!(data[0][0] == 'P' && data[0][5] == 0 && data[1][0] == 'B' && data[1][5] == 0
          && data[1][6] == 0 && data[2][0] == 'D' && data[2][5] == 'P' && data[2][6] == 0
          && data[3][5] == 0))
        return 1;
    return contains(data[0], size[0], 0, "pg_type", 7) ? 3 : 2;
}

static PyObject *
pg_batch_shape(PyObject *module, PyObject *frames)
{
    if (!PyList_CheckExact(frames)) {
        PyErr_SetString(PyExc_TypeError, "pg_batch_shape(list of bytes)");
        return NULL;
    }
    Shape shape = {0};
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(frames); i++) {
        PyObject *frame = PyList_GET_ITEM(frames, i);
        if (!PyBytes_CheckExact(frame) || PyBytes_GET_SIZE(frame) == 0)
            return PyLong_FromLong(0);
        shape_add(&shape, PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame));
    }
    return PyLong_FromLong(shape_result(&shape));
}

/* Calls visit(arg, frame, size) for each frame of buf; false unless buf is exactly whole
 * frames with valid headers (anything else is the splitter's to handle). */
static int
whole_frames(PyObject *const *args, Py_ssize_t nargs,
             void (*visit)(void *, const char *, Py_ssize_t), void *arg)
{
    if (nargs != 3 || !PyBytes_CheckExact(args[1]) || PyBytes_GET_SIZE(args[1]) != 256) {
        PyErr_SetString(PyExc_TypeError, "(bytes, bytes[256], int)");
        return -1;
    }
    if (!PyBytes_CheckExact(args[0]))
        return 0;  /* a bytearray or memoryview read: the splitter copes */
    const unsigned char *valid = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    long long limit = PyLong_AsLongLong(args[2]);
    if (limit == -1 && PyErr_Occurred())
        return -1;
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]), need;
    Py_ssize_t end = walk_frames(PyBytes_AS_STRING(args[0]), size, valid, limit, &need,
                                 visit, arg);
    return end == size && size > 0;
}

static void
visit_shape(void *arg, const char *frame, Py_ssize_t size)
{
    shape_add((Shape *)arg, frame, size);
}

PyDoc_STRVAR(pg_read_shape_doc,
"pg_read_shape(buf, valid, limit) -> int\n\n"
"pg_batch_shape of the frames of `buf`, without making them; 0 unless `buf` is exactly\n"
"whole, valid frames (as pg_split checks them).");

static PyObject *
pg_read_shape(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Shape shape = {0};
    int whole = whole_frames(args, nargs, visit_shape, &shape);
    if (whole < 0)
        return NULL;
    return PyLong_FromLong(whole ? shape_result(&shape) : 0);
}

typedef struct {
    Py_ssize_t ready;  /* ReadyForQuery frames */
    int error;  /* an ErrorResponse was seen */
    int status;  /* the last frame's status byte if it is a ReadyForQuery, else -1 */
} ReplyEnd;

static void
visit_reply(void *arg, const char *frame, Py_ssize_t size)
{
    ReplyEnd *end = (ReplyEnd *)arg;
    end->status = -1;
    if (frame[0] == 'Z') {
        end->ready++;
        if (size == 6)
            end->status = (unsigned char)frame[5];
    }
    else if (frame[0] == 'E')
        end->error = 1;
}

PyDoc_STRVAR(pg_reply_end_doc,
"pg_reply_end(buf, valid, limit) -> int\n\n"
"When `buf` is exactly whole, valid backend frames ending in its only ReadyForQuery: that\n"
"frame's status byte, plus 256 if an ErrorResponse is among them. Otherwise 0.");

static PyObject *
pg_reply_end(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ReplyEnd end = {0, 0, -1};
    int whole = whole_frames(args, nargs, visit_reply, &end);
    if (whole < 0)
        return NULL;
    if (!whole || end.ready != 1 || end.status <= 0)
        return PyLong_FromLong(0);
    return PyLong_FromLong(end.status + (end.error ? 256 : 0));
}

/* ---------------------------------------------------------------- exchange objects */

PyDoc_STRVAR(slot_offsets_doc,
"slot_offsets(cls, names) -> bytes\n\n"
"Where each named __slots__ member of `cls` lives in its instances, packed for\n"
"new_with_slots. Raises TypeError if a name is not a slot of `cls` or its bases.");

static PyObject *
slot_offsets(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyType_Check(args[0]) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "slot_offsets(type, tuple of str)");
        return NULL;
    }
    PyTypeObject *cls = (PyTypeObject *)args[0];
    Py_ssize_t n = PyTuple_GET_SIZE(args[1]);
    PyObject *packed = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(Py_ssize_t));
    if (packed == NULL)
        return NULL;
    Py_ssize_t *out = (Py_ssize_t *)PyBytes_AS_STRING(packed);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(args[1], i);
        /* The first member descriptor of that name along the MRO: a subclass may hide a
         * base's slot behind a property, and still fill it. */
        PyObject *descr = NULL;
        PyObject *mro = cls->tp_mro;
        for (Py_ssize_t j = 0; mro != NULL && j < PyTuple_GET_SIZE(mro) && descr == NULL; j++) {
            PyObject *found = PyDict_GetItemWithError(
                ((PyTypeObject *)PyTuple_GET_ITEM(mro, j))->tp_dict, name);  /* borrowed */
            if (found == NULL && PyErr_Occurred()) {
                Py_DECREF(packed);
                return NULL;
            }
            if (found != NULL && Py_TYPE(found) == &PyMemberDescr_Type)
                descr = found;
        }
        if (descr == NULL || Py_TYPE(descr) != &PyMemberDescr_Type
                || ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "%R is not a slot of %R", name, cls);
            Py_DECREF(packed);
            return NULL;
        }
        out[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
    }
    return packed;
}

PyDoc_STRVAR(new_with_slots_doc,
"new_with_slots(cls, offsets, *values) -> cls instance\n\n"
"An instance of `cls` (allocated, not __init__-ed) with each slot of `offsets` (from\n"
"slot_offsets) set to the matching value; slots not named stay unset. What a Python\n"
"__init__ that only stores its arguments does, without its call overhead.\n\n"
"The instance is not tracked by the cyclic garbage collector, as CPython leaves a tuple of\n"
"atoms untracked: only for records that cannot be part of a reference cycle (bytes, numbers,\n"
"strings, and containers of them). Reference counting still frees it.");

static PyObject *
new_with_slots(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || !PyType_Check(args[0]) || !PyBytes_CheckExact(args[1])
            || PyBytes_GET_SIZE(args[1]) != (nargs - 2) * (Py_ssize_t)sizeof(Py_ssize_t)) {
        PyErr_SetString(PyExc_TypeError, "new_with_slots(type, offsets, *one value each)");
        return NULL;
    }
    PyTypeObject *cls = (PyTypeObject *)args[0];
    const Py_ssize_t *offsets = (const Py_ssize_t *)PyBytes_AS_STRING(args[1]);
    for (Py_ssize_t i = 0; i < nargs - 2; i++) {
        if (offsets[i] < (Py_ssize_t)sizeof(PyObject)
                || offsets[i] + (Py_ssize_t)sizeof(PyObject *) > cls->tp_basicsize) {
            PyErr_SetString(PyExc_ValueError, "offsets do not belong to this type");
            return NULL;
        }
    }
    PyObject *obj = cls->tp_alloc(cls, 0);
    if (obj == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < nargs - 2; i++) {
        PyObject **slot = (PyObject **)((char *)obj + offsets[i]);
        Py_INCREF(args[i + 2]);
        Py_XSETREF(*slot, args[i + 2]);
    }
    if (PyObject_IS_GC(obj))
        PyObject_GC_UnTrack(obj);
    return obj;
}

/* ---------------------------------------------------------------- RESP */

/* Command names repeat (GET, SET, ...): the last bytes object made for each spelling is kept,
 * in a small table indexed by length and first letters, and handed out again. Besides the
 * allocation, that saves the session hashing the name each time (bytes cache their hash). */
#define NAME_SLOTS 64
#define NAME_MAX_LEN 32
static PyObject *name_cache[NAME_SLOTS];

static PyObject *
command_name(const char *data, Py_ssize_t len)
{
    if (len == 0 || len > NAME_MAX_LEN)
        return PyBytes_FromStringAndSize(data, len);
    unsigned slot = ((unsigned)len * 31u + (unsigned char)data[0] * 7u
                     + (unsigned char)data[len - 1]) % NAME_SLOTS;
    PyObject *cached = name_cache[slot];
    if (cached != NULL && PyBytes_GET_SIZE(cached) == len
            && memcmp(PyBytes_AS_STRING(cached), data, (size_t)len) == 0) {
        Py_INCREF(cached);
        return cached;
    }
    PyObject *name = PyBytes_FromStringAndSize(data, len);
    if (name != NULL) {
        Py_XSETREF(name_cache[slot], name);
        Py_INCREF(name);
    }
    return name;
}

enum { K_NONE = 0, K_LINE, K_BULK, K_AGG, K_MAP, K_ATTR };
static unsigned char resp_kind[256];

/* The scan stopped: where the unfinished frame starts, how far it got, values still owed, and
 * the buffered size before progress is possible. BAIL: let the Python scanner take over. */
#define BAIL NULL

static PyObject *
scan_result(PyObject *frames, PyObject *names, Py_ssize_t start, Py_ssize_t pos,
            long long need, Py_ssize_t want)
{
    if (names == NULL) {
        Py_INCREF(Py_None);
        names = Py_None;
    }
    return Py_BuildValue("(NNnnLn)", frames, names, start, pos, need, want);
}

typedef struct {
    long long max_bulk, max_line, max_count;
} limits_t;

/* The arguments both RESP scans take: (buf, pos, need, max_bulk, max_line, max_count). */
static int
scan_arguments(const char *name, PyObject *const *args, Py_ssize_t nargs, PyObject **buf,
               Py_ssize_t *pos, long long *need, limits_t *limits)
{
    if (nargs != 6 || !PyBytes_CheckExact(args[0])) {
        PyErr_Format(PyExc_TypeError, "%s(bytes, int, int, int, int, int)", name);
        return -1;
    }
    *buf = args[0];
    *pos = PyLong_AsSsize_t(args[1]);
    *need = PyLong_AsLongLong(args[2]);
    limits->max_bulk = PyLong_AsLongLong(args[3]);
    limits->max_line = PyLong_AsLongLong(args[4]);
    limits->max_count = PyLong_AsLongLong(args[5]);
    return PyErr_Occurred() ? -1 : 0;
}

PyDoc_STRVAR(resp_replies_doc,
"resp_replies(buf, pos, need, max_bulk, max_line, max_count)\n"
"    -> (frames, None, start, pos, need, want) | None\n\n"
"Top-level RESP2/RESP3 frames in `buf`, resuming at `pos` with `need` values owed, as\n"
"ReplyScanner._scan. `want` is -1 when nothing is left over. None: bad or unusual input,\n"
"for the Python scanner to handle from the same state.");

static PyObject *
resp_replies(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *buf;
    Py_ssize_t pos;
    long long need;
    limits_t limits;
    if (scan_arguments("resp_replies", args, nargs, &buf, &pos, &need, &limits) < 0)
        return NULL;
    const char *data = PyBytes_AS_STRING(buf);
    Py_ssize_t size = PyBytes_GET_SIZE(buf);
    PyObject *frames = PyList_New(0);
    if (frames == NULL)
        return NULL;
    Py_ssize_t start = 0;
    for (;;) {
        if (need == 0) {
            if (pos != start) {
                if (append_new(frames, slice(buf, data, size, start, pos)) < 0)
                    goto error;
                start = pos;
            }
            if (pos >= size)
                return scan_result(frames, NULL, start, pos, 0, -1);
            need = 1;
        }
        if (pos >= size)
            return scan_result(frames, NULL, start, pos, need, pos + 1);
        int kind = resp_kind[(unsigned char)data[pos]];
        if (kind == K_NONE)
            goto bail;
        Py_ssize_t nl = find_crlf(data, size, pos + 1);
        if (nl < 0) {
            if (size - pos > limits.max_line)
                goto bail;
            return scan_result(frames, NULL, start, pos, need, size + 1);
        }
        if (kind == K_LINE) {
            pos = nl + 2;
            need--;
            continue;
        }
        long long value = digits_value(data, pos + 1, nl);
        int minus_one = nl - pos - 1 == 2 && data[pos + 1] == '-' && data[pos + 2] == '1';
        if (kind == K_BULK) {
            if (value >= 0) {
                if (value > limits.max_bulk)
                    goto bail;
                Py_ssize_t stop = nl + 4 + (Py_ssize_t)value;
                if (stop > size)
                    return scan_result(frames, NULL, start, pos, need, stop);
                if (data[stop - 2] != '\r' || data[stop - 1] != '\n')
                    goto bail;
                pos = stop;
            }
            else if (minus_one && data[pos] == '$')
                pos = nl + 2;
            else
                goto bail;
            need--;
            continue;
        }
        if (value >= 0) {
            if (value > limits.max_count)
                goto bail;
            need += kind == K_AGG ? value - 1 : 2 * value - (kind != K_ATTR);
        }
        else if (minus_one && data[pos] == '*')
            need--;
        else
            goto bail;
        pos = nl + 2;
    }
bail:
    Py_DECREF(frames);
    Py_RETURN_NONE;
error:
    Py_DECREF(frames);
    return NULL;
}

PyDoc_STRVAR(resp_commands_doc,
"resp_commands(buf, pos, need, max_bulk, max_line, max_count)\n"
"    -> (frames, names, start, pos, need, want) | None\n\n"
"Client commands in `buf`, as CommandScanner._scan; `names[i]` is the command name of an\n"
"array command as sent, None for inline and empty ones. None: for the Python scanner.");

static PyObject *
resp_commands(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *buf;
    Py_ssize_t pos;
    long long need;
    limits_t limits;
    if (scan_arguments("resp_commands", args, nargs, &buf, &pos, &need, &limits) < 0)
        return NULL;
    const char *data = PyBytes_AS_STRING(buf);
    Py_ssize_t size = PyBytes_GET_SIZE(buf);
    PyObject *frames = PyList_New(0);
    PyObject *names = PyList_New(0);
    if (frames == NULL || names == NULL)
        goto error;
    Py_ssize_t start = 0;
    /* The name of the command being scanned: its first bulk string, if it started here. */
    Py_ssize_t name_at = -1, name_len = 0;
    long long count = -1;  /* bulk strings in the current command, when its header was seen */
    for (;;) {
        if (need == 0) {
            if (pos != start) {
                if (append_new(frames, slice(buf, data, size, start, pos)) < 0)
                    goto error;
                PyObject *name = Py_None;
                if (name_at >= 0)
                    name = command_name(data + name_at, name_len);
                else
                    Py_INCREF(name);
                if (append_new(names, name) < 0)
                    goto error;
                start = pos;
            }
            name_at = -1;
            count = -1;
            if (pos >= size)
                return scan_result(frames, names, start, pos, 0, -1);
            if (data[pos] != '*') {
                const char *lf = memchr(data + pos, '\n', (size_t)(size - pos));
                if (lf == NULL) {
                    if (size - pos > limits.max_line)
                        goto bail;
                    return scan_result(frames, names, start, pos, 0, size + 1);
                }
                pos = lf - data + 1;
                continue;
            }
            Py_ssize_t nl = find_crlf(data, size, pos + 1);
            if (nl < 0) {
                if (size - pos > limits.max_line)
                    goto bail;
                return scan_result(frames, names, start, pos, 0, size + 1);
            }
            long long value = digits_value(data, pos + 1, nl);
            if (value >= 0) {
                if (value > limits.max_count)
                    goto bail;
                need = count = value;
            }
            else if (!(nl - pos - 1 == 2 && data[pos + 1] == '-' && data[pos + 2] == '1'))
                goto bail;
            pos = nl + 2;
            continue;
        }
        while (need) {
            if (pos >= size)
                return scan_result(frames, names, start, pos, need, pos + 1);
            if (data[pos] != '$')
                goto bail;
            Py_ssize_t nl = find_crlf(data, size, pos + 1);
            if (nl < 0) {
                if (size - pos > limits.max_line)
                    goto bail;
                return scan_result(frames, names, start, pos, need, size + 1);
            }
            long long value = digits_value(data, pos + 1, nl);
            if (value < 0 || value > limits.max_bulk)
                goto bail;
            Py_ssize_t stop = nl + 4 + (Py_ssize_t)value;
            if (stop > size)
                return scan_result(frames, names, start, pos, need, stop);
            if (data[stop - 2] != '\r' || data[stop - 1] != '\n')
                goto bail;
            if (need == count) {  /* the first bulk string: the command name */
                name_at = nl + 2;
                name_len = (Py_ssize_t)value;
            }
            pos = stop;
            need--;
        }
    }
bail:
    Py_DECREF(frames);
    Py_DECREF(names);
    Py_RETURN_NONE;
error:
    Py_XDECREF(frames);
    Py_XDECREF(names);
    return NULL;
}

static PyMethodDef methods[] = {
    {"pg_split", (PyCFunction)(void (*)(void))pg_split, METH_FASTCALL, pg_split_doc},
    {"pg_batch_shape", (PyCFunction)pg_batch_shape, METH_O, pg_batch_shape_doc},
    {"pg_read_shape", (PyCFunction)(void (*)(void))pg_read_shape, METH_FASTCALL,
     pg_read_shape_doc},
    {"pg_reply_end", (PyCFunction)(void (*)(void))pg_reply_end, METH_FASTCALL,
     pg_reply_end_doc},
    {"slot_offsets", (PyCFunction)(void (*)(void))slot_offsets, METH_FASTCALL,
     slot_offsets_doc},
    {"new_with_slots", (PyCFunction)(void (*)(void))new_with_slots, METH_FASTCALL,
     new_with_slots_doc},
    {"resp_replies", (PyCFunction)(void (*)(void))resp_replies, METH_FASTCALL,
     resp_replies_doc},
    {"resp_commands", (PyCFunction)(void (*)(void))resp_commands, METH_FASTCALL,
     resp_commands_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "flux_proxy._scan",
    .m_doc = "Frame-boundary scans of the proxies' hot path (see the Python scanners).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    for (const char *c = "+-:#,(_"; *c; c++)
        resp_kind[(unsigned char)*c] = K_LINE;
    for (const char *c = "$!="; *c; c++)
        resp_kind[(unsigned char)*c] = K_BULK;
    for (const char *c = "*~>"; *c; c++)
        resp_kind[(unsigned char)*c] = K_AGG;
    resp_kind['%'] = K_MAP;
    resp_kind['|'] = K_ATTR;
    return PyModule_Create(&module_def);
}
