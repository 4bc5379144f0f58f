/* kit.dicom._getc: the C-GET answer path's two pure readers in C (written by hand, for speed).
 *
 * Per instance a C-GET answers, the PACS waits for the kit: what the kit spends between the last
 * byte of an instance and its C-STORE-RSP is paid once per instance, and on a busy two-core machine
 * the client's CPU competes with the PACS's own. In Python these two steps were ~55 us of the
 * ~110 us of Python per instance (bench/dimse.py's C-GET, replayed without the network):
 *
 *   message(buf, lo, hi, limit, max_command, max_data, spill_at)
 *       The DIMSE message that starts at buf[lo:hi] (a PDU boundary), as
 *       kit.dicom._fastnet.DataPhase.recv reads it (P-DATA-TF PDUs, their PDVs, the command set
 *       decoded as kit.dicom._command.decode_command does, the data set's fragments joined):
 *         (end, context_id, command, dataset)   the whole message is in buf[lo:end], which ends
 *                                               a PDU; dataset is bytes, or None (no data set);
 *         (need, start)                         not all there yet: buf[lo:lo + need] is needed to go
 *                                               on; start is -1 when that is the next PDU's header
 *                                               (an idle wait), else the offset from lo of the PDU
 *                                               being read (its deadline applies);
 *         None                                  anything else (another PDU type, a PDU over its limit,
 *                                               a malformed PDV or command set, a message ending
 *                                               inside a PDU, a set over its bound (max_data -1:
 *                                               none; a data set past spill_at goes to disk), more
 *                                               than MAX_FRAGMENTS fragments): the caller reads the same
 *                                               bytes with its general path, which raises or copes.
 *   identity(data, implicit, little, max_depth)
 *       kit.dicom._getphase.read_identity's walk of a (not deflated) data set's top-level elements up
 *       to (0020,000E): (sop_instance, study, series), each str or None if absent; None when the walk
 *       fails or a value is not ASCII (the caller's Python walk then says why, or decodes it).
 *
 * Nothing here does I/O or keeps state; both return what the Python paths return, or None for the
 * caller to take its own path (tests/unit/dicom_store/test_getc.py compares them on generated input).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define MAX_FRAGMENTS 64
#define NO_DATASET 0x0101
#define UNDEFINED 0xFFFFFFFFu
#define TAG_SOP 0x00080018u
#define TAG_STUDY 0x0020000Du
#define TAG_SERIES 0x0020000Eu
#define TAG_ITEM 0xFFFEE000u
#define TAG_ITEM_END 0xFFFEE00Du
#define TAG_SEQ_END 0xFFFEE0DDu

static inline uint32_t be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint32_t le32(const unsigned char *p)
{
    return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}

static inline uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint16_t be16(const unsigned char *p) { return (uint16_t)((p[0] << 8) | p[1]); }

/* ---- message ------------------------------------------------------------------------------- */

typedef struct {
    Py_ssize_t at, size;
} Frag;

/* decode_command over buf[0:n]: the dict, or NULL with no exception set when it does not decode
 * (the caller falls back; Python raises the ValueError), or NULL with an exception (memory). */
static PyObject *decode_command(const unsigned char *buf, Py_ssize_t n, int *bad)
{
    PyObject *out = PyDict_New();
    if (out == NULL)
        return NULL;
    Py_ssize_t pos = 0;
    while (pos + 8 <= n) {
        uint16_t group = le16(buf + pos), elem = le16(buf + pos + 2);
        Py_ssize_t length = (Py_ssize_t)le32(buf + pos + 4);
        pos += 8;
        if (pos + length > n || (group != 0 && PyDict_GET_SIZE(out) == 0))
            goto bad;
        if (group == 0) {
            PyObject *key = PyLong_FromLong(elem);
            PyObject *value = key ? PyBytes_FromStringAndSize((const char *)buf + pos, length) : NULL;
            int failed = value == NULL || PyDict_SetItem(out, key, value) < 0;
            Py_XDECREF(key);
            Py_XDECREF(value);
            if (failed) {
                Py_DECREF(out);
                return NULL;
            }
        }
        pos += length;
    }
    if (pos == n)
        return out;
bad:
    Py_DECREF(out);
    *bad = 1;
    return NULL;
}

/* command_int(command, 0x0800) == NO_DATASET */
static int no_dataset(PyObject *command)
{
    PyObject *key = PyLong_FromLong(0x0800);
    if (key == NULL)
        return -1;
    PyObject *raw = PyDict_GetItemWithError(command, key);
    Py_DECREF(key);
    if (raw == NULL)
        return PyErr_Occurred() ? -1 : 0;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    if (n == 2)
        return le16(p) == NO_DATASET;
    if (n == 4)
        return le32(p) == NO_DATASET;
    return 0;
}

/* the fragments joined into one new bytes object */
static PyObject *joined(const unsigned char *buf, const Frag *frags, int count, Py_ssize_t total)
{
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        return NULL;
    char *to = PyBytes_AS_STRING(out);
    for (int i = 0; i < count; i++) {
        memcpy(to, buf + frags[i].at, (size_t)frags[i].size);
        to += frags[i].size;
    }
    return out;
}

static PyObject *need(Py_ssize_t need, Py_ssize_t start)
{
    return Py_BuildValue("(nn)", need, start);
}

static PyObject *message(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "message() takes 7 arguments");
        return NULL;
    }
    Py_ssize_t lo, hi, limit, max_command, max_data, spill_at;  /* limit: pdu_limit(0x04, ...) */
    Py_ssize_t *ints[6] = {&lo, &hi, &limit, &max_command, &max_data, &spill_at};
    for (int i = 0; i < 6; i++) {
        *ints[i] = PyLong_AsSsize_t(args[i + 1]);
        if (*ints[i] == -1 && PyErr_Occurred())
            return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL, *command = NULL;
    const unsigned char *buf = (const unsigned char *)view.buf;
    Frag cmd[MAX_FRAGMENTS], data[MAX_FRAGMENTS];
    int ncmd = 0, ndata = 0, context = -1, has_data = -1;  /* has_data: -1 command not whole yet */
    Py_ssize_t cmd_size = 0, data_size = 0, pos = lo;
    if (lo < 0 || hi > view.len || lo > hi) {
        PyErr_SetString(PyExc_ValueError, "lo and hi must lie within the buffer");
        goto done;
    }
    while (1) {
        if (hi - pos < 6) {  /* the next PDU's header */
            result = need(pos - lo + 6, pos == hi ? -1 : pos - lo);
            goto done;
        }
        uint32_t length = be32(buf + pos + 2);
        if (buf[pos] != 0x04 || (Py_ssize_t)length > limit)
            goto fallback;
        Py_ssize_t end = pos + 6 + (Py_ssize_t)length;
        if (end > hi) {
            result = need(end - lo, pos - lo);
            goto done;
        }
        int ended = 0;
        for (Py_ssize_t p = pos + 6; p < end;) {
            if (ended || p + 6 > end)
                goto fallback;  /* a PDV after the message's end, or a cut PDV header */
            Py_ssize_t size = (Py_ssize_t)be32(buf + p);
            int cx = buf[p + 4], control = buf[p + 5];
            Py_ssize_t stop = p + 4 + size;
            if (size < 2 || stop > end || (context >= 0 && cx != context))
                goto fallback;
            context = cx;
            Frag frag = {p + 6, size - 2};
            if (control & 0x01) {
                if (has_data >= 0 || ncmd == MAX_FRAGMENTS)
                    goto fallback;
                cmd_size += frag.size;
                if (cmd_size > max_command)
                    goto fallback;
                cmd[ncmd++] = frag;
                if (control & 0x02) {
                    int bad = 0;
                    if (ncmd == 1) {
                        command = decode_command(buf + cmd[0].at, cmd[0].size, &bad);
                    } else {
                        PyObject *whole = joined(buf, cmd, ncmd, cmd_size);
                        if (whole == NULL)
                            goto done;
                        command = decode_command((const unsigned char *)PyBytes_AS_STRING(whole),
                                                 cmd_size, &bad);
                        Py_DECREF(whole);
                    }
                    if (command == NULL) {
                        if (bad)
                            goto fallback;
                        goto done;
                    }
                    int none = no_dataset(command);
                    if (none < 0)
                        goto done;
                    has_data = !none;
                    ended = none;
                }
            } else {
                if (has_data != 1 || ndata == MAX_FRAGMENTS)
                    goto fallback;
                data_size += frag.size;
                if ((max_data >= 0 && data_size > max_data) || data_size > spill_at)
                    goto fallback;
                data[ndata++] = frag;
                ended = (control & 0x02) != 0;
            }
            p = stop;
        }
        pos = end;
        if (ended) {
            PyObject *dataset = has_data ? joined(buf, data, ndata, data_size) : Py_NewRef(Py_None);
            if (dataset == NULL)
                goto done;
            result = Py_BuildValue("(niNN)", pos, context, command, dataset);
            command = NULL;  /* stolen (N), also on failure */
            goto done;
        }
    }
fallback:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(command);
    PyBuffer_Release(&view);
    return result;
}

/* ---- identity ------------------------------------------------------------------------------ */

typedef struct {
    const unsigned char *data;
    Py_ssize_t end;
    int little, max_depth;
} Walk;

typedef struct {
    uint32_t tag;
    Py_ssize_t length, pos;  /* length: UNDEFINED as (Py_ssize_t)0xFFFFFFFF */
    int un;                  /* the VR is UN */
} Element;

static const char *LONG_VRS[] = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR",
                                 "UT", "UV"};

/* _IdentityWalk.element: 0, or -1 where Python raises ValueError */
static int element(const Walk *w, Py_ssize_t pos, int implicit, Element *out)
{
    if (pos + 8 > w->end)
        return -1;
    const unsigned char *p = w->data + pos;
    uint16_t group = w->little ? le16(p) : be16(p), elem = w->little ? le16(p + 2) : be16(p + 2);
    out->tag = ((uint32_t)group << 16) | elem;
    out->un = 0;
    out->pos = pos + 8;
    if (implicit || group == 0xFFFE) {
        out->length = (Py_ssize_t)(w->little ? le32(p + 4) : be32(p + 4));
        return 0;
    }
    for (size_t i = 0; i < sizeof LONG_VRS / sizeof *LONG_VRS; i++) {
        if (p[4] == (unsigned char)LONG_VRS[i][0] && p[5] == (unsigned char)LONG_VRS[i][1]) {
            if (pos + 12 > w->end)
                return -1;
            out->length = (Py_ssize_t)(w->little ? le32(p + 8) : be32(p + 8));
            out->pos = pos + 12;
            out->un = p[4] == 'U' && p[5] == 'N';
            return 0;
        }
    }
    out->length = w->little ? le16(p + 6) : be16(p + 6);
    return 0;
}

/* _IdentityWalk.sequence: the position after the delimiter, or -1 */
static Py_ssize_t sequence(const Walk *w, Py_ssize_t pos, int implicit, int depth)
{
    if (depth > w->max_depth)
        return -1;
    Element e;
    while (1) {
        if (element(w, pos, 1, &e) < 0)
            return -1;
        pos = e.pos;
        if (e.tag == TAG_SEQ_END)
            return pos;
        if (e.tag != TAG_ITEM)
            return -1;
        if (e.length != (Py_ssize_t)UNDEFINED) {
            pos += e.length;
            continue;
        }
        while (1) {  /* an undefined-length item: its elements, up to the item delimiter */
            if (element(w, pos, implicit, &e) < 0)
                return -1;
            pos = e.pos;
            if (e.tag == TAG_ITEM_END)
                break;
            if (e.length == (Py_ssize_t)UNDEFINED) {
                pos = sequence(w, pos, implicit || e.un, depth + 1);
                if (pos < 0)
                    return -1;
            } else {
                pos += e.length;
            }
        }
    }
}

/* bytes(value).decode("ascii", "replace").strip(" \x00"), or NULL with no exception: not ASCII */
static PyObject *ascii_value(const unsigned char *p, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i] & 0x80)
            return NULL;
    while (n > 0 && (p[0] == ' ' || p[0] == 0)) {
        p++;
        n--;
    }
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == 0))
        n--;
    return PyUnicode_DecodeASCII((const char *)p, n, NULL);
}

static PyObject *identity(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_buffer view;
    int implicit, little, max_depth;
    if (!PyArg_ParseTuple(args, "y*ppi", &view, &implicit, &little, &max_depth))
        return NULL;
    Walk w = {(const unsigned char *)view.buf, view.len, little, max_depth};
    Py_ssize_t found[3] = {-1, -1, -1}, sizes[3] = {0, 0, 0};
    Py_ssize_t pos = 0;
    PyObject *result = NULL;
    Element e;
    while (pos < w.end) {
        if (element(&w, pos, implicit, &e) < 0)
            goto fallback;
        pos = e.pos;
        if (e.tag > TAG_SERIES)
            break;
        if (e.length == (Py_ssize_t)UNDEFINED) {
            pos = sequence(&w, pos, implicit || e.un, 1);
            if (pos < 0)
                goto fallback;
            continue;
        }
        if (pos + e.length > w.end)
            goto fallback;
        int slot = e.tag == TAG_SOP ? 0 : e.tag == TAG_STUDY ? 1 : e.tag == TAG_SERIES ? 2 : -1;
        if (slot >= 0) {  /* the last of a repeated tag wins, as in the Python dict */
            found[slot] = pos;
            sizes[slot] = e.length;
        }
        pos += e.length;
    }
    PyObject *values[3];
    for (int i = 0; i < 3; i++) {
        values[i] = found[i] < 0 ? Py_NewRef(Py_None) : ascii_value(w.data + found[i], sizes[i]);
        if (values[i] == NULL) {
            for (int j = 0; j < i; j++)
                Py_DECREF(values[j]);
            if (PyErr_Occurred())
                goto done;
            goto fallback;
        }
    }
    result = Py_BuildValue("(NNN)", values[0], values[1], values[2]);
    goto done;
fallback:
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"message", (PyCFunction)(void (*)(void))message, METH_FASTCALL,
     "message(buf, lo, hi, limit, max_command, max_data, spill_at): see the module docstring."},
    {"identity", identity, METH_VARARGS,
     "identity(data, implicit, little, max_depth): (sop, study, series) or None; see the docstring."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kit.dicom._getc",
    "The C-GET answer path's message and identity readers in C (see kit/dicom/_getc.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__getc(void)
{
    return PyModule_Create(&module);
}
