/* The common case of Flusher._flush in C: each dirty outbox's queue sent with one
 * send(2)/sendmsg(2) straight to its socket, skipping the Python calls and the event
 * loop's write wrapper (docs/benchmarks.md, "A compiled flush loop").
 *
 * The C path takes an outbox only when its transport owns an open plain-TCP socket and
 * holds nothing: not closing, write buffer empty, checked right before the send with the
 * GIL held throughout (no Python code runs in between, so neither can change). Writing
 * around a transport is otherwise wrong: behind buffered data it would reorder bytes, and
 * after the transport closed its fd the number may belong to another client. Everything
 * else -- TLS (fd -1), paused, closed, a stale backlog, a partial write, EAGAIN, an error
 * -- goes to the Python `Outbox.flush()`, which hands what remains to transport.write, so
 * the loop buffers it and reports errors the usual way (connection_lost).
 *
 * The outbox's __slots__ are read and written through their member offsets, found once by
 * bind(): a getattr per field would cost about as much as the Python we skip.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <limits.h>
#include <sys/socket.h>
#include <sys/uio.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* SIGPIPE: CPython ignores it at startup anyway */
#endif

/* iovecs on the stack; a queue of more chunks than this takes the Python path (joins) */
#define MAX_IOV 1024

enum { F_CHUNKS, F_SIZE, F_DIRTY, F_PAUSED, F_CLOSED, F_TRANSPORT, F_FD, F_BACKLOG, NFIELDS };
static const char *const field_names[NFIELDS] = {
    "_chunks", "_size", "_dirty", "_paused", "closed", "transport", "_fd", "_backlog",
};

typedef struct {
    PyTypeObject *outbox_type; /* NULL until bind() */
    Py_ssize_t offsets[NFIELDS];
    PyObject *str_flush;
    PyObject *str_is_closing;
    PyObject *str_get_write_buffer_size;
    PyObject *zero;
} module_state;

static inline module_state *get_state(PyObject *module) {
    return (module_state *)PyModule_GetState(module);
}

static inline PyObject *slot_get(PyObject *obj, Py_ssize_t offset) {
    return *(PyObject **)((char *)obj + offset); /* borrowed; NULL when unset */
}

static inline void slot_set(PyObject *obj, Py_ssize_t offset, PyObject *value) {
    PyObject **p = (PyObject **)((char *)obj + offset);
    PyObject *old = *p;
    Py_INCREF(value);
    *p = value;
    Py_XDECREF(old);
}

static PyObject *cflush_bind(PyObject *module, PyObject *type) {
    module_state *st = get_state(module);
    if (!PyType_Check(type)) {
        PyErr_SetString(PyExc_TypeError, "bind() takes the Outbox class");
        return NULL;
    }
    Py_ssize_t offsets[NFIELDS];
    for (int i = 0; i < NFIELDS; i++) {
        PyObject *descr = PyObject_GetAttrString(type, field_names[i]);
        if (descr == NULL)
            return NULL;
        /* only a __slots__ member of an object is laid out at a fixed offset */
        int ok = Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
                 ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX &&
                 ((PyMemberDescrObject *)descr)->d_common.d_type == (PyTypeObject *)type;
        if (ok)
            offsets[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
        Py_DECREF(descr);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "%s is not a __slots__ field of %R", field_names[i],
                         type);
            return NULL;
        }
    }
    Py_INCREF(type);
    Py_XSETREF(st->outbox_type, (PyTypeObject *)type);
    memcpy(st->offsets, offsets, sizeof(offsets));
    Py_RETURN_NONE;
}

/* Whether the C path may send `box`'s queue now; fills iov/count/total. -1 on error. */
static int ready(module_state *st, PyObject *box, struct iovec *iov, Py_ssize_t *count,
                 Py_ssize_t *total, int *fd_out) {
    const Py_ssize_t *off = st->offsets;
    if (Py_TYPE(box) != st->outbox_type)
        return 0;
    PyObject *fd_obj = slot_get(box, off[F_FD]);
    if (fd_obj == NULL || !PyLong_CheckExact(fd_obj))
        return 0;
    long fd = PyLong_AsLong(fd_obj);
    if (fd < 0 || fd > INT_MAX) {
        PyErr_Clear();
        return 0;
    }
    /* The transport still owns the fd and holds nothing. (asyncio's methods are Python:
     * they run before the outbox's fields are read, so nothing they might set off matters.) */
    PyObject *transport = slot_get(box, off[F_TRANSPORT]);
    if (transport == NULL)
        return 0;
    Py_INCREF(transport);
    PyObject *args[1] = {transport};
    PyObject *res = PyObject_VectorcallMethod(
        st->str_is_closing, args, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    int closing = res == NULL ? -1 : PyObject_IsTrue(res);
    Py_XDECREF(res);
    if (closing != 0) {
        Py_DECREF(transport);
        return closing < 0 ? -1 : 0;
    }
    res = PyObject_VectorcallMethod(st->str_get_write_buffer_size, args,
                                    1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(transport);
    if (res == NULL)
        return -1;
    int empty = PyLong_CheckExact(res) && PyObject_Not(res) == 1;
    Py_DECREF(res);
    if (!empty)
        return 0;
    /* From here to the send no Python code runs (the GIL is held): the checks stay true. */
    if (slot_get(box, off[F_PAUSED]) != Py_False || slot_get(box, off[F_CLOSED]) != Py_False)
        return 0;
    PyObject *backlog = slot_get(box, off[F_BACKLOG]);
    if (backlog == NULL || !PyLong_CheckExact(backlog) || PyObject_Not(backlog) != 1)
        return 0; /* the Python path refreshes a stale backlog and the write threshold */
    PyObject *chunks = slot_get(box, off[F_CHUNKS]);
    if (chunks == NULL || !PyList_CheckExact(chunks))
        return 0;
    Py_ssize_t n = PyList_GET_SIZE(chunks);
    if (n == 0 || n > MAX_IOV)
        return 0;
    Py_ssize_t sum = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *chunk = PyList_GET_ITEM(chunks, i);
        if (!PyBytes_CheckExact(chunk))
            return 0;
        iov[i].iov_base = PyBytes_AS_STRING(chunk);
        iov[i].iov_len = (size_t)PyBytes_GET_SIZE(chunk);
        sum += PyBytes_GET_SIZE(chunk);
    }
    *count = n;
    *total = sum;
    *fd_out = (int)fd;
    return 1;
}

/* After `sent` of `total` bytes left: the queue becomes the unsent rest. */
static int keep_rest(module_state *st, PyObject *box, Py_ssize_t sent, Py_ssize_t total) {
    PyObject *chunks = slot_get(box, st->offsets[F_CHUNKS]);
    Py_ssize_t n = PyList_GET_SIZE(chunks), i = 0, skip = sent;
    while (i < n && PyBytes_GET_SIZE(PyList_GET_ITEM(chunks, i)) <= skip) {
        skip -= PyBytes_GET_SIZE(PyList_GET_ITEM(chunks, i));
        i++;
    }
    PyObject *rest = PyList_GetSlice(chunks, i, n);
    if (rest == NULL)
        return -1;
    if (skip > 0) { /* the first unsent chunk went out in part */
        PyObject *head = PyList_GET_ITEM(rest, 0);
        PyObject *tail =
            PyBytes_FromStringAndSize(PyBytes_AS_STRING(head) + skip, PyBytes_GET_SIZE(head) - skip);
        if (tail == NULL) {
            Py_DECREF(rest);
            return -1;
        }
        PyList_SetItem(rest, 0, tail); /* steals tail, drops head's reference */
    }
    PyObject *size = PyLong_FromSsize_t(total - sent);
    if (size == NULL) {
        Py_DECREF(rest);
        return -1;
    }
    slot_set(box, st->offsets[F_CHUNKS], rest);
    slot_set(box, st->offsets[F_SIZE], size);
    Py_DECREF(rest);
    Py_DECREF(size);
    return 0;
}

static int python_flush(module_state *st, PyObject *box) {
    PyObject *args[1] = {box};
    PyObject *res =
        PyObject_VectorcallMethod(st->str_flush, args, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

/* flush(dirty) -> (writes, bytes): what the C sends carried (Python's count themselves). */
static PyObject *cflush_flush(PyObject *module, PyObject *dirty) {
    module_state *st = get_state(module);
    if (!PyList_CheckExact(dirty)) {
        PyErr_SetString(PyExc_TypeError, "flush() takes a list of outboxes");
        return NULL;
    }
    if (st->outbox_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_cflush.bind() was not called");
        return NULL;
    }
    struct iovec iov[MAX_IOV];
    Py_ssize_t writes = 0;
    long long bytes = 0;
    /* the list is only ours, but a Python flush could in theory touch it: re-read its size */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(dirty); i++) {
        PyObject *box = PyList_GET_ITEM(dirty, i);
        Py_INCREF(box);
        Py_ssize_t count = 0, total = 0;
        int fd = -1;
        int ok = ready(st, box, iov, &count, &total, &fd);
        if (ok < 0)
            goto error;
        if (ok == 0) {
            if (python_flush(st, box) < 0)
                goto error;
            Py_DECREF(box);
            continue;
        }
        slot_set(box, st->offsets[F_DIRTY], Py_False);
        ssize_t sent;
        if (count == 1) {
            sent = send(fd, iov[0].iov_base, iov[0].iov_len, MSG_DONTWAIT | MSG_NOSIGNAL);
        } else {
            struct msghdr msg = {0};
            msg.msg_iov = iov;
            msg.msg_iovlen = (size_t)count;
            sent = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        }
        if (sent == total) {
            PyObject *chunks = slot_get(box, st->offsets[F_CHUNKS]);
            if (PyList_SetSlice(chunks, 0, count, NULL) < 0)
                goto error;
            slot_set(box, st->offsets[F_SIZE], st->zero);
        } else if (sent > 0) {
            if (keep_rest(st, box, sent, total) < 0)
                goto error;
        }
        if (sent > 0) {
            writes++;
            bytes += sent;
        }
        /* EAGAIN, an error or a partial write: transport.write takes what is left */
        if (sent != total && python_flush(st, box) < 0)
            goto error;
        Py_DECREF(box);
        continue;
    error:
        Py_DECREF(box);
        return NULL;
    }
    return Py_BuildValue("(nL)", writes, bytes);
}

static PyMethodDef methods[] = {
    {"bind", cflush_bind, METH_O, "bind(Outbox): find the slots the C flush reads and writes."},
    {"flush", cflush_flush, METH_O,
     "flush(dirty) -> (writes, bytes): flush each outbox, sending plain-TCP queues directly."},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *module) {
    module_state *st = get_state(module);
    st->outbox_type = NULL;
    st->str_flush = PyUnicode_InternFromString("flush");
    st->str_is_closing = PyUnicode_InternFromString("is_closing");
    st->str_get_write_buffer_size = PyUnicode_InternFromString("get_write_buffer_size");
    st->zero = PyLong_FromLong(0);
    if (!st->str_flush || !st->str_is_closing || !st->str_get_write_buffer_size || !st->zero)
        return -1;
    return 0;
}

static int traverse(PyObject *module, visitproc visit, void *arg) {
    module_state *st = get_state(module);
    Py_VISIT(st->outbox_type);
    return 0;
}

static int clear(PyObject *module) {
    module_state *st = get_state(module);
    Py_CLEAR(st->outbox_type);
    Py_CLEAR(st->str_flush);
    Py_CLEAR(st->str_is_closing);
    Py_CLEAR(st->str_get_write_buffer_size);
    Py_CLEAR(st->zero);
    return 0;
}

static void free_module(void *module) { clear((PyObject *)module); }

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tidings.wire._cflush",
    .m_doc = "The flush loop's common case in C (see tidings.wire.outbox).",
    .m_size = sizeof(module_state),
    .m_methods = methods,
    .m_slots = slots,
    .m_traverse = traverse,
    .m_clear = clear,
    .m_free = free_module,
};

PyMODINIT_FUNC PyInit__cflush(void) { return PyModuleDef_Init(&moduledef); }
