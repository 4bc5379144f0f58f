/* kit.fhir._rowc: the Observation row of the FHIR frames' fast path in C (written by hand, for speed).
 *
 * observation(o) returns what kit.fhir.frames_fast_types._observation returns for a decoded
 * Observation struct, the same 35-tuple built from the same fields by the same rules (tests
 * compare the two on generated resources: tests/unit/fhir_fast/test_rowc.py). The shapes it
 * does not take on itself go to that Python function, whole: a subject that is not a plain
 * reference (a "#contained" one, one with an identifier, an empty one), notes, extensions, or
 * any object of another class than configure() named.
 *
 * Why C: the row is built right after msgspec decodes the resource, for every Observation (labs
 * and vitals dwarf the other types); in Python it is ~60 attribute reads and a 35-tuple, about a
 * fifth of the fast path's time. Here each field is read at its slot's offset (msgspec structs
 * keep their fields in slots: member descriptors of type T_OBJECT_EX, checked at configure()).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <string.h>

/* classes, in configure()'s argument order */
enum { OBS, CC, CODING, CODECC, CODE, REF, QTY, VAL, RR, META, COMP, NCLS };

/* fields read, per class (enum order = the names' order below) */
enum { O_ID, O_META, O_EXT, O_STATUS, O_CATEGORY, O_CODE, O_SUBJECT, O_ENCOUNTER, O_EFFDT, O_EFFPER,
       O_EFFINST, O_ISSUED, O_VQ, O_VCC, O_VSTR, O_VBOOL, O_VINT, O_VDT, O_DAR, O_INTERP, O_RR,
       O_PERF, O_MEMBERS, O_DERIVED, O_NOTE, O_COMP, O_N };
static const char *const OBS_F[] = {
    "id", "meta", "extension", "status", "category", "code", "subject", "encounter",
    "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued", "valueQuantity",
    "valueCodeableConcept", "valueString", "valueBoolean", "valueInteger", "valueDateTime",
    "dataAbsentReason", "interpretation", "referenceRange", "performer", "hasMember", "derivedFrom",
    "note", "component", NULL};
enum { CC_CODING, CC_TEXT };
static const char *const CC_F[] = {"coding", "text", NULL};
enum { CG_SYSTEM, CG_CODE, CG_DISPLAY };
static const char *const CODING_F[] = {"system", "code", "display", NULL};
static const char *const CODE_F[] = {"code", NULL};
enum { R_REFERENCE, R_IDENTIFIER };
static const char *const REF_F[] = {"reference", "identifier", NULL};
enum { Q_VALUE, Q_UNIT, Q_CODE };
static const char *const QTY_F[] = {"value", "unit", "code", NULL};
static const char *const VAL_F[] = {"value", NULL};
enum { RR_LOW, RR_HIGH, RR_TEXT };
static const char *const RR_F[] = {"low", "high", "text", NULL};
static const char *const META_F[] = {"lastUpdated", NULL};
enum { CP_CODE, CP_VQ, CP_VCC, CP_VSTR, CP_INTERP };
static const char *const COMP_F[] = {"code", "valueQuantity", "valueCodeableConcept", "valueString",
                                     "interpretation", NULL};
static const char *const *const FIELDS[NCLS] = {OBS_F, CC_F, CODING_F, CC_F, CODE_F, REF_F, QTY_F,
                                                VAL_F, RR_F, META_F, COMP_F};

#define ROW 35

static PyTypeObject *types[NCLS];
static Py_ssize_t offsets[NCLS][O_N];
static PyObject *fallback;     /* frames_fast_types._observation */
static PyObject *patient_ref;  /* frames_fast_types._patient_ref (notes its answer in pref) */
static PyObject *pref;         /* frames_fast_types._PREF: reference -> patient_ref */
static int configured;

/* a field of an object known to be of class k (a borrowed reference; NULL if unset) */
#define F(obj, k, i) (*(PyObject **)((char *)(obj) + offsets[k][i]))
/* obj is None or exactly of class k */
#define IS(obj, k) ((PyObject *)Py_TYPE(obj) == (PyObject *)types[k])

/* Thrown to the Python extractor: a shape this file does not take on, or an unexpected class. */
#define OTHER (-2)

/* a truthy test that cannot fail for the values read here (str, list, dict, None, Raw) */
static inline int truthy(PyObject *v, int *err)
{
    if (v == Py_None)
        return 0;
    if (PyUnicode_CheckExact(v))
        return PyUnicode_GET_LENGTH(v) != 0;
    if (PyList_CheckExact(v))
        return PyList_GET_SIZE(v) != 0;
    int t = PyObject_IsTrue(v);
    if (t < 0)
        *err = 1;
    return t > 0;
}

/* ``a or b``: a new reference. The fields read so are typed str or None (msgspec decodes
 * nothing else into them), so the general truth test below is never reached in practice. */
static inline PyObject *or_(PyObject *a, PyObject *b)
{
    int t = a == Py_None ? 0 : PyUnicode_CheckExact(a) ? PyUnicode_GET_LENGTH(a) != 0 : PyObject_IsTrue(a);
    if (t < 0)
        PyErr_Clear();  /* not a str: cannot fail for what msgspec decodes */
    PyObject *v = t > 0 ? a : b;
    Py_INCREF(v);
    return v;
}

/* a field, checked set; *bad on an unset slot */
static inline PyObject *get(PyObject *obj, int k, int i, int *bad)
{
    PyObject *v = F(obj, k, i);
    if (v == NULL) {
        *bad = OTHER;
        return Py_None;
    }
    return v;
}

/* the length of a list field (0 for None), or -1 with *bad set for anything else */
static inline Py_ssize_t items(PyObject *xs, int *bad)
{
    if (xs == Py_None)
        return 0;
    if (!PyList_CheckExact(xs))
        return *bad = OTHER, -1;
    return PyList_GET_SIZE(xs);
}

/* _code(cc) of frames_fast_types for a CodeCC or CC (coding[0].code or text, else text): new ref */
static PyObject *code_of(PyObject *cc, int *bad)
{
    if (cc == Py_None)
        Py_RETURN_NONE;
    int k = IS(cc, CODECC) ? CODECC : IS(cc, CC) ? CC : -1;
    if (k < 0)
        return *bad = OTHER, NULL;
    PyObject *cods = get(cc, k, CC_CODING, bad), *text = get(cc, k, CC_TEXT, bad);
    Py_ssize_t n = *bad ? -1 : items(cods, bad);
    if (n < 0)
        return NULL;
    if (n) {
        PyObject *c0 = PyList_GET_ITEM(cods, 0);
        int ck = k == CODECC ? CODE : CODING;
        if (!IS(c0, ck))
            return *bad = OTHER, NULL;
        PyObject *code = get(c0, ck, ck == CODE ? 0 : CG_CODE, bad);
        return *bad ? NULL : or_(code, text);
    }
    Py_INCREF(text);
    return text;
}

/* (system, code, display) of every Coding, flattened (frames_fast_types._codings): new ref */
static PyObject *codings_of(PyObject *cods, int *bad)
{
    Py_ssize_t n = PyList_GET_SIZE(cods);
    PyObject *out = PyTuple_New(3 * n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *c = PyList_GET_ITEM(cods, i);
        if (!IS(c, CODING)) {
            *bad = OTHER;
            Py_DECREF(out);
            return NULL;
        }
        for (int f = 0; f < 3; f++) {
            PyObject *v = get(c, CODING, f, bad);
            if (*bad) {
                Py_DECREF(out);
                return NULL;
            }
            Py_INCREF(v);
            PyTuple_SET_ITEM(out, 3 * i + f, v);
        }
    }
    return out;
}

/* A CodeableConcept (a CC, or None) into out[0..2], new references (left NULL for None):
 * coding[0].code or text, coding[0].system, coding[0].display or text; without codings text,
 * -, text. With ``codings``, every coding flattened into *codings. 0, or -1 (out[] may be set). */
static int concept(PyObject *cc, PyObject **out, PyObject **codings, int *bad)
{
    if (cc == Py_None)
        return 0;
    if (!IS(cc, CC))
        return *bad = OTHER, -1;
    PyObject *cods = get(cc, CC, CC_CODING, bad), *text = get(cc, CC, CC_TEXT, bad);
    Py_ssize_t n = *bad ? -1 : items(cods, bad);
    if (n < 0)
        return -1;
    if (n == 0) {
        Py_INCREF(text);
        Py_INCREF(text);
        out[0] = out[2] = text;
        return 0;
    }
    PyObject *c0 = PyList_GET_ITEM(cods, 0);
    if (!IS(c0, CODING))
        return *bad = OTHER, -1;
    PyObject *code = get(c0, CODING, CG_CODE, bad), *sys = get(c0, CODING, CG_SYSTEM, bad);
    PyObject *disp = get(c0, CODING, CG_DISPLAY, bad);
    if (*bad)
        return -1;
    out[0] = or_(code, text);
    Py_INCREF(sys);
    out[1] = sys;
    out[2] = or_(disp, text);
    if (codings != NULL && (*codings = codings_of(cods, bad)) == NULL)
        return -1;
    return 0;
}

/* A Quantity (or None) into out[0] (value) and out[1] (unit or code), new references. 0, or -1 */
static int quantity(PyObject *q, PyObject **out, int *bad)
{
    if (q == Py_None)
        return 0;
    if (!IS(q, QTY))
        return *bad = OTHER, -1;
    PyObject *value = get(q, QTY, Q_VALUE, bad), *unit = get(q, QTY, Q_UNIT, bad);
    PyObject *code = get(q, QTY, Q_CODE, bad);
    if (*bad)
        return -1;
    Py_INCREF(value);
    out[0] = value;
    out[1] = or_(unit, code);
    return 0;
}

/* a field of an object of class k, or None when obj is None: new ref (NULL: *bad set) */
static PyObject *field_of(PyObject *obj, int k, int i, int *bad)
{
    if (obj == Py_None)
        Py_RETURN_NONE;
    if (!IS(obj, k))
        return *bad = OTHER, NULL;
    PyObject *v = get(obj, k, i, bad);
    if (*bad)
        return NULL;
    Py_INCREF(v);
    return v;
}

/* a list of Refs' references (None if the list is empty or None): new ref */
static PyObject *refs_of(PyObject *xs, int *bad)
{
    Py_ssize_t n = items(xs, bad);
    if (n <= 0)
        return n < 0 ? NULL : (Py_INCREF(Py_None), Py_None);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = field_of(PyList_GET_ITEM(xs, i), REF, R_REFERENCE, bad);
        if (r == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, r);
    }
    return out;
}

/* every value of ``v[0..n)``, NULL ones as None, into ``out`` from ``at`` on (the references are
 * stolen; released when ``out`` is NULL) */
static void put(PyObject *out, Py_ssize_t at, PyObject **v, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (v[i] == NULL) {
            Py_INCREF(Py_None);
            v[i] = Py_None;
        }
        if (out != NULL)
            PyTuple_SET_ITEM(out, at + i, v[i]);
        else
            Py_DECREF(v[i]);
    }
}

#define COMP_N 8

/* frames_fast_types._components: COMP_N values per component, flattened: new ref */
static PyObject *components_of(PyObject *comps, Py_ssize_t n, int *bad)
{
    PyObject *out = PyTuple_New(COMP_N * n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *c = PyList_GET_ITEM(comps, i), *v[COMP_N] = {NULL};
        if (!IS(c, COMP)) {
            *bad = OTHER;
            goto fail;
        }
        PyObject *interp = get(c, COMP, CP_INTERP, bad), *vstr = get(c, COMP, CP_VSTR, bad);
        Py_ssize_t ni = *bad ? -1 : items(interp, bad);
        if (ni < 0 || concept(get(c, COMP, CP_CODE, bad), v, NULL, bad) < 0 ||
            quantity(get(c, COMP, CP_VQ, bad), v + 3, bad) < 0 ||
            (v[6] = code_of(get(c, COMP, CP_VCC, bad), bad)) == NULL ||
            (ni && (v[7] = code_of(PyList_GET_ITEM(interp, 0), bad)) == NULL) || *bad)
            goto fail;  /* *bad alone: an unset slot read as None on the way */
        Py_INCREF(vstr);
        v[5] = vstr;
        put(out, COMP_N * i, v, COMP_N);
        continue;
    fail:
        for (int f = 0; f < COMP_N; f++)
            Py_XDECREF(v[f]);
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* the row, or NULL with *bad == OTHER (the Python extractor's turn) or an exception set */
static PyObject *row_of(PyObject *o, int *bad)
{
    PyObject *v[ROW] = {NULL}, *f[O_N], *t[3] = {NULL};
    for (int i = 0; i < O_N; i++) {
        f[i] = F(o, OBS, i);
        if (f[i] == NULL)
            return *bad = OTHER, NULL;
    }
    int err = 0;
    if (truthy(f[O_NOTE], &err) || truthy(f[O_EXT], &err) || err)
        return err ? NULL : (*bad = OTHER, NULL);

    /* code, code_system, code_display, codings */
    if (concept(f[O_CODE], v + 5, v + 8, bad) < 0)
        goto fail;
    /* category, categories */
    Py_ssize_t n = items(f[O_CATEGORY], bad);
    if (n < 0)
        goto fail;
    if (n) {
        if ((v[4] = PyList_New(n)) == NULL)
            goto fail;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *c = code_of(PyList_GET_ITEM(f[O_CATEGORY], i), bad);
            if (c == NULL)
                goto fail;
            PyList_SET_ITEM(v[4], i, c);
        }
        v[3] = PyList_GET_ITEM(v[4], 0);
        Py_INCREF(v[3]);
    }
    /* subject, patient_ref (patient_id: only from the shapes left to Python) */
    PyObject *s = f[O_SUBJECT];
    if (s != Py_None) {
        if (!IS(s, REF))
            goto other;
        PyObject *ref = get(s, REF, R_REFERENCE, bad), *ident = get(s, REF, R_IDENTIFIER, bad);
        if (*bad)
            goto fail;
        if (!PyUnicode_CheckExact(ref) || PyUnicode_GET_LENGTH(ref) == 0 ||
            PyUnicode_READ_CHAR(ref, 0) == '#' || ident != Py_None)
            goto other;
        Py_INCREF(ref);
        v[9] = ref;
        PyObject *p = PyDict_GetItemWithError(pref, ref);
        if (p != NULL) {
            Py_INCREF(p);
            v[10] = p;
        } else if (PyErr_Occurred() || (v[10] = PyObject_CallOneArg(patient_ref, ref)) == NULL) {
            goto fail;
        }
    }
    /* encounter */
    if ((v[12] = field_of(f[O_ENCOUNTER], REF, R_REFERENCE, bad)) == NULL)
        goto fail;
    /* effective, effective_end */
    PyObject *eff = f[O_EFFDT];
    if (eff == Py_None) {
        PyObject *period = f[O_EFFPER];
        if (period != Py_None && !PyDict_CheckExact(period))
            goto other;
        if (period != Py_None && PyDict_GET_SIZE(period)) {
            PyObject *start = PyDict_GetItemString(period, "start");
            PyObject *end = PyDict_GetItemString(period, "end");
            v[13] = start != NULL ? start : Py_None;
            v[14] = end != NULL ? end : Py_None;
            Py_INCREF(v[13]);
            Py_INCREF(v[14]);
        } else {
            eff = f[O_EFFINST];
        }
    }
    if (v[13] == NULL) {
        Py_INCREF(eff);
        v[13] = eff;
    }
    /* value_quantity, value_unit; value_code, value_code_system */
    if (quantity(f[O_VQ], v + 16, bad) < 0)
        goto fail;
    int vc = concept(f[O_VCC], t, NULL, bad);
    v[19] = t[0];
    v[20] = t[1];
    Py_XDECREF(t[2]);
    if (vc < 0)
        goto fail;
    /* data_absent_reason, interpretation */
    if ((v[24] = code_of(f[O_DAR], bad)) == NULL || (n = items(f[O_INTERP], bad)) < 0 ||
        (n && (v[25] = code_of(PyList_GET_ITEM(f[O_INTERP], 0), bad)) == NULL))
        goto fail;
    /* reference_range_low, _high, _text */
    if ((n = items(f[O_RR], bad)) < 0)
        goto fail;
    if (n) {
        PyObject *r0 = PyList_GET_ITEM(f[O_RR], 0);
        if (!IS(r0, RR))
            goto other;
        if ((v[26] = field_of(get(r0, RR, RR_LOW, bad), VAL, 0, bad)) == NULL ||
            (v[27] = field_of(get(r0, RR, RR_HIGH, bad), VAL, 0, bad)) == NULL ||
            (v[28] = field_of(r0, RR, RR_TEXT, bad)) == NULL)
            goto fail;
    }
    /* performer, has_member, derived_from */
    if ((n = items(f[O_PERF], bad)) < 0 ||
        (n && (v[29] = field_of(PyList_GET_ITEM(f[O_PERF], 0), REF, R_REFERENCE, bad)) == NULL) ||
        (v[30] = refs_of(f[O_MEMBERS], bad)) == NULL || (v[31] = refs_of(f[O_DERIVED], bad)) == NULL)
        goto fail;
    /* components */
    if ((n = items(f[O_COMP], bad)) < 0 || (n && (v[33] = components_of(f[O_COMP], n, bad)) == NULL))
        goto fail;
    /* last_updated; the plain fields: id, status, issued, value_string/boolean/integer/datetime */
    if ((v[1] = field_of(f[O_META], META, 0, bad)) == NULL)
        goto fail;
    static const int plain[][2] = {{0, O_ID}, {2, O_STATUS}, {15, O_ISSUED}, {18, O_VSTR},
                                   {21, O_VBOOL}, {22, O_VINT}, {23, O_VDT}};
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
        Py_INCREF(f[plain[i][1]]);
        v[plain[i][0]] = f[plain[i][1]];
    }
    if (*bad)  /* an unset slot, read as None on the way */
        goto fail;
    PyObject *row = PyTuple_New(ROW);
    put(row, 0, v, ROW);
    return row;
other:
    *bad = OTHER;
fail:
    for (int i = 0; i < ROW; i++)
        Py_XDECREF(v[i]);
    return NULL;
}

static PyObject *observation(PyObject *self, PyObject *o)
{
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "kit.fhir._rowc is not configured");
        return NULL;
    }
    if (!IS(o, OBS))
        return PyObject_CallOneArg(fallback, o);
    int bad = 0;
    PyObject *row = row_of(o, &bad);
    if (row != NULL || bad != OTHER)
        return row;
    return PyObject_CallOneArg(fallback, o);
}

/* the offset of a T_OBJECT_EX slot named ``name`` of ``type``, or -1 with an exception set */
static Py_ssize_t slot(PyTypeObject *type, const char *name)
{
    PyObject *d = PyObject_GetAttrString((PyObject *)type, name);
    if (d == NULL)
        return -1;
    Py_ssize_t off = -1;
    if (Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type == T_OBJECT_EX && !(m->flags & READONLY) && m->offset > 0)
            off = m->offset;
    }
    Py_DECREF(d);
    if (off < 0)
        PyErr_Format(PyExc_TypeError, "%s.%s is not an object slot", type->tp_name, name);
    return off;
}

static PyObject *configure(PyObject *self, PyObject *args)
{
    PyObject *classes, *fb, *pr, *cache;
    if (!PyArg_ParseTuple(args, "O!OOO!:configure", &PyTuple_Type, &classes, &fb, &pr, &PyDict_Type, &cache))
        return NULL;
    if (PyTuple_GET_SIZE(classes) != NCLS)
        return PyErr_Format(PyExc_ValueError, "configure() takes %d classes", NCLS);
    Py_ssize_t found[NCLS][O_N];  /* committed only when every class checks out */
    for (int k = 0; k < NCLS; k++) {
        PyObject *t = PyTuple_GET_ITEM(classes, k);
        if (!PyType_Check(t))
            return PyErr_Format(PyExc_TypeError, "class %d is not a type", k);
        for (int i = 0; FIELDS[k][i] != NULL; i++)
            if ((found[k][i] = slot((PyTypeObject *)t, FIELDS[k][i])) < 0)
                return NULL;
    }
    memcpy(offsets, found, sizeof offsets);
    for (int k = 0; k < NCLS; k++) {
        PyObject *t = PyTuple_GET_ITEM(classes, k);
        Py_INCREF(t);
        Py_XSETREF(types[k], (PyTypeObject *)t);
    }
    Py_INCREF(fb);
    Py_XSETREF(fallback, fb);
    Py_INCREF(pr);
    Py_XSETREF(patient_ref, pr);
    Py_INCREF(cache);
    Py_XSETREF(pref, cache);
    configured = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(classes, fallback, patient_ref, pref): the struct classes (Observation, CC, Coding, "
     "CodeCC, Code, Ref, Quantity, Value, RefRange, Meta, Component), the Python extractor, the "
     "patient-reference function and its cache."},
    {"observation", observation, METH_O,
     "observation(o): the Observation row of frames_fast_types._observation (which it calls for "
     "the shapes it leaves to Python)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "kit.fhir._rowc", NULL, -1, methods};

PyMODINIT_FUNC PyInit__rowc(void) { return PyModule_Create(&module); }
