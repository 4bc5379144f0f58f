/* kit.hl7._leanc: MLLPSender's usual round trip in one C call (written by hand, for speed).
 *
 * round_trip(fd, message) does what MLLPSender.send's pure-Python lean path does, with the
 * same checks and the same results (tests compare the two on generated input and real peers):
 *
 *   - message is ER7 text on the lean path: "MSH|^~\&|" first, CR last, no LF, VT or FS, an
 *     MSH-10 without ^ ~ \ & (else None: the caller takes its general path; lone surrogates too);
 *   - one sendmsg() of VT + UTF-8 text + FS CR, one recv() of up to 4096 bytes (a blocking socket
 *     with kernel timeouts: SO_SNDTIMEO/SO_RCVTIMEO bound both), the GIL released for each;
 *   - a reply that is exactly one plain AA frame of this MSH-10 (what ack_fast.aa_read reads by
 *     its tail and the _HEAD expression) gives the Ack itself, made as aa_read makes it;
 *   - anything else gives (status, value, sent_at, reply) for the caller's general path:
 *     status 1 send error (value: errno), 2 partial send (value: bytes sent), 3 receive error
 *     (value: errno), 4 another reply (value: 0, reply: the bytes received); sent_at is
 *     time.monotonic() just after the send.
 *
 * Why C: the round trip waits on the peer (~0.5 ms with an fsync'ed store), and the caches are
 * cold when the reply comes; the same steps in Python cost 20-30 us of CPU more than here
 * (bench/hl7.py), and the C path's round trip is within a few us of a bare socket's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#define LEAN_READ 4096

static const char START[] = "MSH|^~\\&|";      /* 9 bytes */
static const char HEAD[] = "\x0bMSH|^~\\&|";   /* 10 bytes */

static PyObject *ack_type;  /* kit.hl7.ack_fast._LazyAck, set by configure() */
static PyObject *aa_code;   /* AckCode.AA */
static PyObject *k_msh, *k_code, *k_control_id, *k_text, *empty;

/* a byte of a plain field, several fields: printable ASCII but \ and ~ (ack_fast._P) */
static inline int plain(unsigned char c) { return c >= 0x20 && c <= 0x7D && c != '\\'; }

/* a byte a plain ACK holds in MSA-2 as it is (ack_fast._PLAIN_ID): plain, and not | */
static inline int plain_id(unsigned char c) { return plain(c) && c != '|'; }

/* MSH-3... of a plain acknowledgement (ack_fast._MSH_PLAIN, by one pass): plain bytes; from the
 * seventh field on, MSH-9 is empty, ACK, ACK^... or ^... */
static int msh_plain(const unsigned char *p, Py_ssize_t n)
{
    Py_ssize_t pipes = 0, start = 0, end = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (!plain(c))
            return 0;
        if (c == '|') {
            pipes++;
            if (pipes == 6)
                start = i + 1;
            else if (pipes == 7)
                end = i;
        }
    }
    if (pipes < 6)
        return 1;
    const unsigned char *f = p + start;
    Py_ssize_t len = end - start;
    if (len >= 3 && memcmp(f, "ACK", 3) == 0) {
        f += 3;
        len -= 3;
    }
    return len == 0 || f[0] == '^';
}

/* Whether data (n bytes) is one plain AA frame of the MSH-10 cid (m bytes, plain_id): ends with
 * CR "MSA|AA|" cid CR FS CR, and the rest is HEAD and a plain MSH (aa_read's first test). */
static int aa_frame(const unsigned char *data, Py_ssize_t n, const unsigned char *cid, Py_ssize_t m)
{
    Py_ssize_t tail = m + 11; /* \rMSA|AA| cid \r\x1c\r */
    if (n < tail + 10)
        return 0;
    const unsigned char *t = data + n - tail;
    if (memcmp(t, "\rMSA|AA|", 8) != 0 || memcmp(t + 8, cid, m) != 0 || memcmp(t + 8 + m, "\r\x1c\r", 3) != 0)
        return 0;
    if (memcmp(data, HEAD, 10) != 0)
        return 0;
    return msh_plain(data + 10, n - tail - 10);
}

/* The MSH-10 of text (n UTF-8 bytes) if text is on the lean path: sets *cid and *m, returns 1. */
static int lean_text(const unsigned char *text, Py_ssize_t n, const unsigned char **cid, Py_ssize_t *m)
{
    if (n < 10 || memcmp(text, START, 9) != 0 || text[n - 1] != '\r')
        return 0;
    if (memchr(text, '\n', n) || memchr(text, '\x0b', n) || memchr(text, '\x1c', n))
        return 0;
    const unsigned char *line_end = memchr(text, '\r', n); /* found: the last byte is one */
    const unsigned char *p = text;
    for (int pipes = 0; pipes < 9; pipes++) {
        p = memchr(p, '|', line_end - p);
        if (p == NULL)
            return 0; /* no MSH-10: _control_id says "\r", an odd id */
        p++;
    }
    const unsigned char *e = memchr(p, '|', line_end - p);
    if (e == NULL)
        e = line_end;
    for (const unsigned char *q = p; q < e; q++)
        if (*q == '^' || *q == '~' || *q == '\\' || *q == '&')
            return 0;
    *cid = p;
    *m = e - p;
    return 1;
}

static double monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static PyObject *fallback(int status, Py_ssize_t value, double sent_at, PyObject *reply)
{
    return Py_BuildValue("(inNO)", status, value, PyFloat_FromDouble(sent_at), reply ? reply : Py_None);
}

static PyObject *make_ack(PyObject *reply, const unsigned char *cid, Py_ssize_t m)
{
    PyObject *ack = NULL, *state = NULL, *control_id = NULL;
    ack = ((PyTypeObject *)ack_type)->tp_alloc((PyTypeObject *)ack_type, 0);
    if (ack == NULL)
        goto fail;
    state = PyObject_GenericGetDict(ack, NULL);
    control_id = PyUnicode_DecodeASCII((const char *)cid, m, NULL);
    if (state == NULL || control_id == NULL || PyDict_SetItem(state, k_msh, reply) < 0
            || PyDict_SetItem(state, k_code, aa_code) < 0 || PyDict_SetItem(state, k_control_id, control_id) < 0
            || PyDict_SetItem(state, k_text, empty) < 0)
        goto fail;
    Py_DECREF(state);
    Py_DECREF(control_id);
    return ack;
fail:
    Py_XDECREF(ack);
    Py_XDECREF(state);
    Py_XDECREF(control_id);
    return NULL;
}

static PyObject *round_trip(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyLong_Check(args[0]) || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "round_trip(fd: int, message: str)");
        return NULL;
    }
    if (ack_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "kit.hl7._leanc.configure() was not called");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
        return NULL;
    }
    PyObject *message = args[1], *encoded = NULL, *result = NULL;
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(args[1]) < 0)
        return NULL;
#endif
    const unsigned char *text;
    Py_ssize_t n;
    if (PyUnicode_IS_ASCII(message)) {
        text = PyUnicode_DATA(message);
        n = PyUnicode_GET_LENGTH(message);
    } else {
        encoded = PyUnicode_AsUTF8String(message);
        if (encoded == NULL) { /* lone surrogates: the general path names the error */
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        text = (const unsigned char *)PyBytes_AS_STRING(encoded);
        n = PyBytes_GET_SIZE(encoded);
    }
    const unsigned char *cid;
    Py_ssize_t m;
    if (!lean_text(text, n, &cid, &m)) {
        Py_XDECREF(encoded);
        Py_RETURN_NONE;
    }
    /* an MSH-10 a plain AA holds as it is (else aa_tail gives a tail no frame has) */
    int id_ok = 1;
    for (Py_ssize_t i = 0; id_ok && i < m; i++)
        id_ok = plain_id(cid[i]);

    struct iovec iov[3] = {{(void *)"\x0b", 1}, {(void *)text, (size_t)n}, {(void *)"\x1c\r", 2}};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = 3;
    ssize_t sent;
    int err;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        sent = sendmsg((int)fd, &msg, MSG_NOSIGNAL);
        err = errno;
        Py_END_ALLOW_THREADS
        if (sent >= 0 || err != EINTR)
            break;
        if (PyErr_CheckSignals() < 0)
            goto done; /* a signal handler raised: as socket.send does */
    }
    double sent_at = monotonic();
    if (sent < 0) {
        result = fallback(1, err, sent_at, NULL);
        goto done;
    }
    if (sent < n + 3) {
        result = fallback(2, sent, sent_at, NULL);
        goto done;
    }
    unsigned char buf[LEAN_READ];
    ssize_t got;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        got = recv((int)fd, buf, LEAN_READ, 0);
        err = errno;
        Py_END_ALLOW_THREADS
        if (got >= 0 || err != EINTR)
            break;
        if (PyErr_CheckSignals() < 0)
            goto done;
    }
    if (got < 0) {
        result = fallback(3, err, sent_at, NULL);
        goto done;
    }
    PyObject *reply = PyBytes_FromStringAndSize((const char *)buf, got);
    if (reply == NULL)
        goto done;
    if (id_ok && aa_frame(buf, got, cid, m))
        result = make_ack(reply, cid, m);
    else
        result = fallback(4, 0, sent_at, reply);
    Py_DECREF(reply);
done:
    Py_XDECREF(encoded);
    return result;
}

/* Test hooks: the two checks round_trip makes, on their own. */
static PyObject *py_aa_frame(PyObject *self, PyObject *args)
{
    const char *data, *cid;
    Py_ssize_t n, m;
    if (!PyArg_ParseTuple(args, "y#y#", &data, &n, &cid, &m))
        return NULL;
    for (Py_ssize_t i = 0; i < m; i++)
        if (!plain_id((unsigned char)cid[i]))
            Py_RETURN_FALSE;
    return PyBool_FromLong(aa_frame((const unsigned char *)data, n, (const unsigned char *)cid, m));
}

static PyObject *py_lean_text(PyObject *self, PyObject *args)
{
    const char *text;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y#", &text, &n))
        return NULL;
    const unsigned char *cid;
    Py_ssize_t m;
    if (!lean_text((const unsigned char *)text, n, &cid, &m))
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)cid, m);
}

static PyObject *configure(PyObject *self, PyObject *args)
{
    PyObject *type, *code;
    if (!PyArg_ParseTuple(args, "O!O", &PyType_Type, &type, &code))
        return NULL;
    Py_INCREF(type);
    Py_INCREF(code);
    Py_XSETREF(ack_type, type);
    Py_XSETREF(aa_code, code);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"round_trip", (PyCFunction)(void (*)(void))round_trip, METH_FASTCALL,
     "round_trip(fd, message): the lean round trip (see the module docstring)."},
    {"aa_frame", py_aa_frame, METH_VARARGS, "aa_frame(data, control_id): one plain AA frame of it?"},
    {"lean_text", py_lean_text, METH_VARARGS, "lean_text(utf8): the MSH-10 if on the lean path, else None."},
    {"configure", configure, METH_VARARGS, "configure(ack_type, aa_code): what round_trip returns."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kit.hl7._leanc",
    "MLLPSender's usual round trip in one C call (see kit/hl7/_leanc.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__leanc(void)
{
    k_msh = PyUnicode_InternFromString("_msh");
    k_code = PyUnicode_InternFromString("code");
    k_control_id = PyUnicode_InternFromString("control_id");
    k_text = PyUnicode_InternFromString("text");
    empty = PyUnicode_FromString("");
    if (!k_msh || !k_code || !k_control_id || !k_text || !empty)
        return NULL;
    return PyModule_Create(&module);
}
