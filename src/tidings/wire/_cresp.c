/* C helpers of the publish path.
 *
 * Fast path of tidings.wire.resp.RespParser: one complete, ordinary multibulk request.
 *
 * parse(buf, pos, max_args, max_bulk, max_inline, max_query) -> (args, new_pos) | None
 *
 * Parses the request starting at buf[pos] when it is complete and plain: `*N\r\n` with
 * 0 < N <= max_args, then N `$L\r\n<L bytes>\r\n` with 0 <= L <= max_bulk, headers no
 * longer than max_inline, the whole no more than max_query. Returns None for anything
 * else: an inline command, incomplete input, an error, an unusual number (sign, leading
 * zero, 19 digits or more), an empty request. The caller then runs the pure-Python
 * parser from the same position, so every error text, limit and corner case stays the
 * Python code's: this function only ever accepts what the Python parser accepts, with
 * the same result (tests/wire/test_resp_c.py checks that differentially).
 *
 * As in redis and the Python parser, the byte after each '\r' (normally '\n') is
 * skipped unchecked. The buffer is held through the buffer protocol for the whole call,
 * so it cannot be resized under us while bytes objects are allocated.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* A strict non-negative decimal: no sign, no leading zero (except "0" itself), at most
 * 18 digits (so it fits an int64 with no overflow check). -1 for anything else: the
 * Python parser decides about those. */
static long long
plain_number(const char *p, Py_ssize_t n)
{
    if (n <= 0 || n > 18 || (p[0] == '0' && n > 1)) {
        return -1;
    }
    long long value = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < '0' || c > '9') {
            return -1;
        }
        value = value * 10 + (c - '0');
    }
    return value;
}

/* The header line at data[pos..end) starting with `mark`: its number, and *next set
 * past "\r?". -1 when the line is not complete, too long, or not a plain number. */
static long long
header(const char *data, Py_ssize_t pos, Py_ssize_t end, char mark, Py_ssize_t max_inline,
       Py_ssize_t *next)
{
    if (pos >= end || data[pos] != mark) {
        return -1;
    }
    /* the Python parser's condition: a '\r' at most max_inline bytes after pos */
    Py_ssize_t window = end - pos;
    if (window - 1 > max_inline) {
        window = max_inline + 1;
    }
    const char *cr = memchr(data + pos, '\r', (size_t)window);
    if (cr == NULL) {
        return -1;
    }
    Py_ssize_t at = cr - data;
    if (at + 1 >= end) { /* redis wants one byte after '\r' */
        return -1;
    }
    *next = at + 2;
    return plain_number(data + pos + 1, at - pos - 1);
}

static Py_ssize_t
as_limit(PyObject *value)
{
    /* a limit above what a buffer can hold is no limit: clamp instead of failing */
    int overflow = 0;
    long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (n == -1 && PyErr_Occurred()) {
        return -2;
    }
    if (overflow != 0 || n > PY_SSIZE_T_MAX || n < -1) {
        return overflow < 0 || n < -1 ? -1 : PY_SSIZE_T_MAX;
    }
    return (Py_ssize_t)n;
}

static PyObject *
parse(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "parse(buf, pos, max_args, max_bulk, max_inline, max_query)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t limits[4];
    for (int i = 0; i < 4; i++) {
        limits[i] = as_limit(args[2 + i]);
        if (limits[i] == -2) {
            return NULL;
        }
    }
    Py_ssize_t max_args = limits[0], max_bulk = limits[1];
    Py_ssize_t max_inline = limits[2], max_query = limits[3];
    if (max_inline < 0 || max_args < 1 || max_bulk < 0 || max_query < 0) {
        Py_RETURN_NONE; /* odd limits: the Python parser's business */
    }

    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const char *data = view.buf;
    Py_ssize_t end = view.len;
    PyObject *result = NULL;
    PyObject *list = NULL;
    if (pos < 0 || pos >= end) {
        goto fallback;
    }

    Py_ssize_t at;
    long long count = header(data, pos, end, '*', max_inline, &at);
    /* each bulk takes 6 bytes at least ("$0\r\n\r\n"): fewer left means incomplete */
    if (count <= 0 || count > max_args || count > (end - at) / 6) {
        goto fallback;
    }
    Py_ssize_t size = at - pos; /* the request so far, for max_query */
    list = PyList_New((Py_ssize_t)count);
    if (list == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < (Py_ssize_t)count; i++) {
        Py_ssize_t start;
        long long len = header(data, at, end, '$', max_inline, &start);
        if (len < 0 || len > max_bulk || len > end - start) {
            goto fallback;
        }
        size += (start - at) + (Py_ssize_t)len + 2; /* bounded by the buffer's length */
        if (size > max_query) {
            goto fallback;
        }
        if ((Py_ssize_t)len + 2 > end - start) { /* the bulk and the 2 bytes after it */
            goto fallback;
        }
        PyObject *arg = PyBytes_FromStringAndSize(data + start, (Py_ssize_t)len);
        if (arg == NULL) {
            goto done;
        }
        PyList_SET_ITEM(list, i, arg);
        at = start + (Py_ssize_t)len + 2;
    }
    result = PyTuple_New(2);
    if (result == NULL) {
        goto done;
    }
    PyObject *next = PyLong_FromSsize_t(at);
    if (next == NULL) {
        Py_CLEAR(result);
        goto done;
    }
    PyTuple_SET_ITEM(result, 0, list);
    PyTuple_SET_ITEM(result, 1, next);
    list = NULL;
    goto done;

fallback:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(list);
    PyBuffer_Release(&view);
    return result;
}

/* untrack(obj): take obj out of the cyclic garbage collector's lists. For objects that
 * can never be part of a reference cycle and live long (the hub's retained events): a
 * full collection then no longer scans them, nor do they count towards triggering one. */
static PyObject *
untrack(PyObject *module, PyObject *obj)
{
    (void)module;
    if (PyObject_IS_GC(obj)) {
        PyObject_GC_UnTrack(obj); /* safe on an object already untracked */
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"parse", (PyCFunction)(void (*)(void))parse, METH_FASTCALL,
     "parse(buf, pos, max_args, max_bulk, max_inline, max_query) -> (args, new_pos) | None\n\n"
     "One complete plain multibulk request at buf[pos:]; None: let the Python parser "
     "handle it."},
    {"untrack", untrack, METH_O,
     "untrack(obj): the garbage collector no longer scans obj (it must hold no cycle)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "tidings.wire._cresp",
    "C helpers of the publish path: RespParser's fast path, untrack (see _cresp.c).",
    0,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__cresp(void)
{
    return PyModuleDef_Init(&module);
}
