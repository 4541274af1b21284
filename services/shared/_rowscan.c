/* The one C kernel: flat JSON objects scanned into columns, for the Parquet writer and for P2's ingest.
 *
 * (Beside them, two small leaf kernels, each beside its plain reference: splice() stamps a read's
 * payloads into recorded lines (shared/event.py: stamped_lines), and fixed_seconds() and
 * all_fixed_form() convert and check a column of fixed-form exchange times (shared/timeparse.py).)
 *
 * One parser, two outputs. scan() fills Arrow column buffers from recorded lines back to back, beside
 * its plain reference in shared/parquet.py (msgspec's decode of FastRow, then pyarrow's conversion).
 * scan_objects() fills one list of Python values a column from a read's payloads, beside its plain
 * reference in shared/wire.py (msgspec's decode of WireTrade, then the columns).
 *
 * Either takes only what its reference takes and declines everything else by returning None, and the
 * caller then runs the reference: an unknown key (scan_objects passes over one whose value is a plain
 * scalar, as WireTrade ignores it), a repeated key, a null (scan_objects takes it in an optional
 * column that is nullable), a value of another JSON kind, a string with an escape, a control character or a non-ASCII
 * byte, an integer outside int64 (or outside +-2**53 in a float column), a number no double holds,
 * anything that is not a flat object, and (scan_objects) a value breaking its column's value rule. It
 * knows no field by name: the columns, their kinds and rules come from the schema, as arguments. Property tests hold each
 * output equal to its reference (tests/shared/test_parquet.py, tests/shared/test_wire.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_COLUMNS 64
#define KIND_STR 0
#define KIND_FLOAT 1
#define KIND_INT 2
#define KIND_BOOL 3
#define EXACT_FLOAT_INT (((int64_t)1) << 53)
#define MAX_NUMBER_CHARS 64
#define RECENT 4

typedef struct {
    const char *name;
    Py_ssize_t name_len;
    int kind;
    int required;
    uint8_t *validity; /* one bit a row: 1 present */
    uint8_t *values;   /* 8 bytes a row (float, int), a bit a row (bool), or string offsets (int32) */
    char *chars;       /* string bytes */
    Py_ssize_t chars_len, chars_cap;
    Py_ssize_t nulls;
    /* objects mode */
    int emit;                       /* make the column's values (else only check them) */
    PyObject *list;                 /* the values, one a row (None when absent) */
    PyObject *recent[RECENT];       /* strings that passed the rules, reused while the next is equal */
    int recent_next;
    int has_gt, has_ge;             /* a float column's value rules */
    double gt, ge;
    Py_ssize_t min_len, max_len;    /* a string column's, in bytes (plain ASCII: characters); max_len -1: none */
    PyObject *choices;              /* a string column's allowed values (a tuple of bytes), or NULL */
    int nullable;                   /* an optional column that takes a null as absent (else declined) */
} Column;

/* What a scan makes: Arrow buffers (the Parquet writer), or Python objects (P2's ingest), which
 * also take a null in an optional column (as None) and pass over unknown keys with a scalar value. */
typedef struct {
    int objects;
} Mode;

/* Compact JSON has no whitespace: one comparison settles the usual byte (every JSON space is <= ' '). */
static inline const char *skip_ws(const char *p, const char *end) {
    while (p < end && (unsigned char)*p <= ' ' && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    return p;
}

/* A byte a plain string may not hold: a quote (it ends one), a backslash, a control or a non-ASCII byte. */
static inline int special_byte(unsigned char c) { return c == '"' || c == '\\' || c < 0x20 || c >= 0x80; }

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Whether any of eight bytes (one word, read unaligned) is a special_byte: the classic "has a zero
 * byte" and "has a byte less than n" word tests, exact about whether one is there (not about which). */
static inline int special8(const char *s) {
    uint64_t w;
    memcpy(&w, s, 8);
    uint64_t quote = w ^ (ONES * '"'), slash = w ^ (ONES * '\\');
    uint64_t hits = ((quote - ONES) & ~quote) | ((slash - ONES) & ~slash) | ((w - ONES * 0x20) & ~w) | w;
    return (hits & HIGHS) != 0;
}

/* A string's body, from after its opening quote; NULL unless plain printable ASCII up to the closing quote.
 * Eight bytes at a time while none is special, then byte by byte. */
static inline const char *plain_string(const char *p, const char *end, const char **body_end) {
    const char *s = p;
    while (end - s >= 8 && !special8(s)) s += 8;
    while (s < end) {
        unsigned char c = (unsigned char)*s;
        if (c == '"') {
            *body_end = s;
            return s + 1;
        }
        if (special_byte(c)) return NULL;
        s++;
    }
    return NULL;
}

/* Whether n bytes are equal, a word at a time: inline, for the short keys and labels compared once or
 * more an object, where a call to memcmp costs more than the comparison. From four bytes on, only whole
 * words are read, the last one ending at the last byte (it may overlap the one before). That one goes
 * first, because recent strings that differ (times) mostly differ at their end. */
static inline int same(const char *a, const char *b, Py_ssize_t n) {
    if (n >= 8) {
        uint64_t x, y;
        memcpy(&x, a + n - 8, 8);
        memcpy(&y, b + n - 8, 8);
        if (x != y) return 0;
        for (n -= 8; n > 0; a += 8, b += 8, n -= 8) {
            memcpy(&x, a, 8);
            memcpy(&y, b, 8);
            if (x != y) return 0;
        }
        return 1;
    }
    if (n >= 4) {
        uint32_t x, y, u, v;
        memcpy(&x, a, 4);
        memcpy(&y, b, 4);
        memcpy(&u, a + n - 4, 4);
        memcpy(&v, b + n - 4, 4);
        return x == y && u == v;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                               1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* A JSON number at p, read in one pass. Sets *is_int and *ival when it has no fraction or exponent
 * and fits int64, else *dval. A decimal of at most 15 digits whose exponent is within 10**22 is one
 * correctly rounded IEEE operation on two exact doubles (Clinger's fast path); any other goes to
 * Python's own correctly rounded, locale-free parse. */
static const char *number(const char *p, const char *end, int *is_int, int64_t *ival, double *dval) {
    const char *s = p;
    int neg = 0;
    if (s < end && *s == '-') {
        neg = 1;
        s++;
    }
    if (s >= end) return NULL;
    const char *digits = s;
    uint64_t m = 0; /* the digits' value, exact while there are at most 19 */
    if (*s == '0') {
        s++;
    } else if (*s >= '1' && *s <= '9') {
        while (s < end && *s >= '0' && *s <= '9') m = m * 10 + (uint64_t)(*s++ - '0');
    } else {
        return NULL;
    }
    Py_ssize_t ndigits = s - digits;
    if (s >= end || (*s != '.' && *s != 'e' && *s != 'E')) {
        if (ndigits > 19) return NULL;
        if (neg) {
            if (m > (uint64_t)INT64_MAX + 1) return NULL;
            *ival = (m == (uint64_t)INT64_MAX + 1) ? INT64_MIN : -(int64_t)m;
        } else {
            if (m > (uint64_t)INT64_MAX) return NULL;
            *ival = (int64_t)m;
        }
        *is_int = 1;
        return s;
    }
    Py_ssize_t frac = 0;
    if (*s == '.') {
        const char *f = ++s;
        while (s < end && *s >= '0' && *s <= '9') m = m * 10 + (uint64_t)(*s++ - '0');
        frac = s - f;
        if (frac == 0) return NULL;
    }
    int exp = 0, exp_neg = 0;
    if (s < end && (*s == 'e' || *s == 'E')) {
        s++;
        if (s < end && (*s == '+' || *s == '-')) exp_neg = *s++ == '-';
        const char *e = s;
        for (; s < end && *s >= '0' && *s <= '9'; s++) exp = exp > 1000 ? exp : exp * 10 + (*s - '0');
        if (s == e) return NULL;
    }
    *is_int = 0;
    if (ndigits + frac <= 15 && exp <= 1000) {
        int e = (exp_neg ? -exp : exp) - (int)frac;
        if (e >= -22 && e <= 22) {
            double v = (double)m; /* exact: m < 10**15 < 2**53 */
            v = e < 0 ? v / POW10[-e] : v * POW10[e];
            *dval = neg ? -v : v;
            return s;
        }
    }
    Py_ssize_t len = s - p;
    if (len >= MAX_NUMBER_CHARS) return NULL;
    char buf[MAX_NUMBER_CHARS];
    memcpy(buf, p, (size_t)len);
    buf[len] = '\0';
    char *stop = NULL;
    double d = PyOS_string_to_double(buf, &stop, NULL);
    if (d == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return NULL;
    }
    if (stop != buf + len || !isfinite(d)) return NULL;
    *dval = d;
    return s;
}

static int grow_chars(Column *c, Py_ssize_t need) {
    if (c->chars_len + need <= c->chars_cap) return 0;
    Py_ssize_t cap = c->chars_cap ? c->chars_cap : 256;
    while (cap < c->chars_len + need) cap *= 2;
    if (cap > INT32_MAX) return -1;
    char *grown = PyMem_Realloc(c->chars, (size_t)cap);
    if (grown == NULL) return -1;
    c->chars = grown;
    c->chars_cap = cap;
    return 0;
}

static inline Py_ssize_t bitmap_bytes(Py_ssize_t n) { return (n + 7) / 8; }

/* A column's values buffer for n rows: string offsets (int32, n + 1), a bit a row (bool), 8 bytes a row. */
static inline Py_ssize_t values_bytes(int kind, Py_ssize_t n) {
    return kind == KIND_STR ? 4 * (n + 1) : kind == KIND_BOOL ? bitmap_bytes(n) : 8 * n;
}

static inline void set_bit(uint8_t *bits, Py_ssize_t i) { bits[i >> 3] |= (uint8_t)(1u << (i & 7)); }

/* An unknown key's value when it is a plain string, a number, true, false or null; NULL for anything else. */
static const char *skip_scalar(const char *p, const char *end) {
    if (*p == '"') {
        const char *body_end;
        return plain_string(p + 1, end, &body_end);
    }
    if (end - p >= 4 && (memcmp(p, "true", 4) == 0 || memcmp(p, "null", 4) == 0)) return p + 4;
    if (end - p >= 5 && memcmp(p, "false", 5) == 0) return p + 5;
    int is_int = 0;
    int64_t iv = 0;
    double dv = 0.0;
    return number(p, end, &is_int, &iv, &dv);
}

/* A string of the column's that keeps its rules, as a str: one of its recent ones again when the bytes
 * are the same (labels repeat). NULL without an error set when it breaks a rule; with one on a failure. */
static PyObject *string_object(Column *c, const char *s, Py_ssize_t len) {
    for (int i = 0; i < RECENT; i++) {
        PyObject *seen = c->recent[i];
        if (seen != NULL && PyUnicode_GET_LENGTH(seen) == len && same(PyUnicode_DATA(seen), s, len))
            return Py_NewRef(seen);
    }
    if (len < c->min_len || (c->max_len >= 0 && len > c->max_len)) return NULL;
    if (c->choices != NULL) {
        int allowed = 0;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(c->choices) && !allowed; i++) {
            PyObject *choice = PyTuple_GET_ITEM(c->choices, i);
            allowed = PyBytes_GET_SIZE(choice) == len && memcmp(PyBytes_AS_STRING(choice), s, (size_t)len) == 0;
        }
        if (!allowed) return NULL;
    }
    PyObject *made = PyUnicode_DecodeASCII(s, len, NULL);
    if (made == NULL) return NULL;
    Py_XSETREF(c->recent[c->recent_next], Py_NewRef(made));
    c->recent_next = (c->recent_next + 1) % RECENT;
    return made;
}

/* Row `row` of an objects-mode column; the list owns the reference. NULL is a failure (an error is set). */
static inline int put(Column *c, Py_ssize_t row, PyObject *value) {
    if (value == NULL) return -1;
    if (c->emit) {
        PyList_SET_ITEM(c->list, row, value);
    } else {
        Py_DECREF(value);
    }
    return 0;
}

/* One object at p into row `row`; returns where it ends, or NULL to decline (or on an error, which is set). */
static const char *scan_object(const char *p, const char *end, Column *cols, int ncols, Py_ssize_t row,
                               const Mode *mode) {
    uint64_t seen = 0, nulled = 0;
    int hint = 0; /* keys usually come in the schema's order: try the next column first */
    p = skip_ws(p, end);
    if (p >= end || *p != '{') return NULL;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') {
        p++;
    } else {
        for (;;) {
            if (p >= end || *p != '"') return NULL;
            const char *key = p + 1, *after;
            int k = ncols;
            Py_ssize_t hint_len = cols[hint].name_len;
            if (end - key > hint_len && key[hint_len] == '"' && same(key, cols[hint].name, hint_len)) {
                k = hint; /* the usual case; a name is plain ASCII (read_spec), so the key is too */
                after = key + hint_len + 1;
            } else {
                const char *key_end;
                after = plain_string(key, end, &key_end);
                if (after == NULL) return NULL;
                Py_ssize_t key_len = key_end - key;
                for (int i = 1; i < ncols; i++) { /* from the hint on: the key is usually a little further */
                    int j = hint + i < ncols ? hint + i : hint + i - ncols;
                    if (cols[j].name_len == key_len && same(cols[j].name, key, key_len)) {
                        k = j;
                        break;
                    }
                }
            }
            if (k == ncols && mode->objects) {
                p = skip_ws(after, end);
                if (p >= end || *p != ':') return NULL;
                p = skip_ws(p + 1, end);
                if (p >= end || (p = skip_scalar(p, end)) == NULL) return NULL;
                goto next_key;
            }
            if (k == ncols || (seen >> k) & 1) return NULL;
            hint = k + 1 < ncols ? k + 1 : 0;
            seen |= ((uint64_t)1) << k;
            p = skip_ws(after, end);
            if (p >= end || *p != ':') return NULL;
            p = skip_ws(p + 1, end);
            if (p >= end) return NULL;
            Column *c = &cols[k];
            if (*p == 'n' && mode->objects && !c->required && c->nullable && end - p >= 4 &&
                memcmp(p, "null", 4) == 0) {
                nulled |= ((uint64_t)1) << k; /* as if absent: None, below */
                p += 4;
                goto next_key;
            }
            switch (c->kind) {
            case KIND_STR: {
                if (*p != '"') return NULL;
                const char *body_end;
                const char *next = plain_string(p + 1, end, &body_end);
                if (next == NULL) return NULL;
                Py_ssize_t len = body_end - (p + 1);
                if (mode->objects) {
                    if (put(c, row, string_object(c, p + 1, len)) < 0) return NULL;
                } else if (len) {
                    if (grow_chars(c, len) < 0) return NULL;
                    memcpy(c->chars + c->chars_len, p + 1, (size_t)len);
                    c->chars_len += len;
                }
                p = next;
                break;
            }
            case KIND_BOOL: {
                int truth;
                if (end - p >= 4 && memcmp(p, "true", 4) == 0) {
                    truth = 1;
                    p += 4;
                } else if (end - p >= 5 && memcmp(p, "false", 5) == 0) {
                    truth = 0;
                    p += 5;
                } else {
                    return NULL;
                }
                if (mode->objects) {
                    if (c->emit) put(c, row, Py_NewRef(truth ? Py_True : Py_False));
                } else if (truth) {
                    set_bit(c->values, row);
                }
                break;
            }
            default: {
                int is_int = 0;
                int64_t iv = 0;
                double dv = 0.0;
                const char *next = number(p, end, &is_int, &iv, &dv);
                if (next == NULL) return NULL;
                if (c->kind == KIND_INT) {
                    if (!is_int) return NULL;
                    if (mode->objects) {
                        if (c->emit && put(c, row, PyLong_FromLongLong(iv)) < 0) return NULL;
                    } else {
                        memcpy(c->values + 8 * row, &iv, 8);
                    }
                } else {
                    if (is_int) {
                        if (iv < -EXACT_FLOAT_INT || iv > EXACT_FLOAT_INT) return NULL;
                        dv = (double)iv;
                    }
                    if ((c->has_gt && !(dv > c->gt)) || (c->has_ge && !(dv >= c->ge))) return NULL;
                    if (mode->objects) {
                        if (c->emit && put(c, row, PyFloat_FromDouble(dv)) < 0) return NULL;
                    } else {
                        memcpy(c->values + 8 * row, &dv, 8);
                    }
                }
                p = next;
            }
            }
            if (!mode->objects) set_bit(c->validity, row);
        next_key:
            p = skip_ws(p, end);
            if (p < end && *p == ',') {
                p = skip_ws(p + 1, end);
                continue;
            }
            if (p < end && *p == '}') {
                p++;
                break;
            }
            return NULL;
        }
    }
    for (int k = 0; k < ncols; k++) {
        Column *c = &cols[k];
        if (!((seen >> k) & 1) || ((nulled >> k) & 1)) {
            if (c->required) return NULL;
            c->nulls++;
            if (mode->objects && c->emit) put(c, row, Py_NewRef(Py_None));
        }
        if (c->kind == KIND_STR && !mode->objects) {
            int32_t off = (int32_t)c->chars_len;
            memcpy(c->values + 4 * (row + 1), &off, 4);
        }
    }
    return p;
}

static void free_columns(Column *cols, int ncols) {
    for (int k = 0; k < ncols; k++) {
        PyMem_Free(cols[k].validity);
        PyMem_Free(cols[k].values);
        PyMem_Free(cols[k].chars);
        Py_CLEAR(cols[k].list);
        for (int i = 0; i < RECENT; i++) Py_CLEAR(cols[k].recent[i]);
    }
}

static PyObject *column_result(Column *c, Py_ssize_t n) {
    PyObject *validity;
    if (c->nulls) {
        validity = PyBytes_FromStringAndSize((const char *)c->validity, bitmap_bytes(n));
    } else {
        validity = Py_NewRef(Py_None);
    }
    PyObject *values = PyBytes_FromStringAndSize((const char *)c->values, values_bytes(c->kind, n));
    PyObject *chars = c->kind == KIND_STR ? PyBytes_FromStringAndSize(c->chars ? c->chars : "", c->chars_len)
                                          : Py_NewRef(Py_None);
    if (validity == NULL || values == NULL || chars == NULL) {
        Py_XDECREF(validity);
        Py_XDECREF(values);
        Py_XDECREF(chars);
        return NULL;
    }
    return Py_BuildValue("(NNNn)", validity, values, chars, c->nulls);
}

/* The column spec both entry points take; 0, or -1 with an error set. */
static int read_spec(Column *cols, PyObject *names, Py_buffer *kinds, Py_buffer *required, int *ncols_out) {
    int ncols = (int)PyTuple_GET_SIZE(names);
    *ncols_out = 0;
    if (ncols < 1 || ncols > MAX_COLUMNS || kinds->len != ncols || required->len != ncols) {
        PyErr_SetString(PyExc_ValueError, "scan: bad column spec");
        return -1;
    }
    *ncols_out = ncols;
    for (int k = 0; k < ncols; k++) {
        PyObject *name = PyTuple_GET_ITEM(names, k);
        if (!PyBytes_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "scan: names must be bytes");
            return -1;
        }
        Column *c = &cols[k];
        c->name = PyBytes_AS_STRING(name);
        c->name_len = PyBytes_GET_SIZE(name);
        for (Py_ssize_t i = 0; i < c->name_len; i++) {
            if (special_byte((unsigned char)c->name[i])) {
                PyErr_SetString(PyExc_ValueError, "scan: a name must be plain printable ASCII");
                return -1;
            }
        }
        c->kind = ((const unsigned char *)kinds->buf)[k];
        c->required = ((const unsigned char *)required->buf)[k] != 0;
        if (c->kind > KIND_BOOL) {
            PyErr_SetString(PyExc_ValueError, "scan: unknown kind");
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(scan_doc,
             "scan(data, n, names, kinds, required) -> list | None\n\n"
             "Exactly n flat JSON objects, back to back in data, as one (validity, values, chars, nulls) per column;\n"
             "None when any object is one the plain path must judge. kinds: one byte a column (0 str, 1 float64,\n"
             "2 int64, 3 bool); required: one byte a column (1 required).");

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer data;
    Py_ssize_t n;
    PyObject *names;
    Py_buffer kinds, required;
    if (!PyArg_ParseTuple(args, "y*nO!y*y*", &data, &n, &PyTuple_Type, &names, &kinds, &required)) return NULL;
    PyObject *result = NULL;
    Column cols[MAX_COLUMNS];
    memset(cols, 0, sizeof(cols));
    int ncols = 0;
    Mode mode = {0};
    if (read_spec(cols, names, &kinds, &required, &ncols) < 0) goto done;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "scan: bad column spec");
        goto done;
    }
    /* An object takes two bytes at least: a larger n cannot be right, and must not size the buffers. */
    if (n == 0 || n > data.len / 2) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    for (int k = 0; k < ncols; k++) {
        Column *c = &cols[k];
        c->validity = PyMem_Calloc((size_t)bitmap_bytes(n) + 1, 1);
        c->values = PyMem_Calloc((size_t)values_bytes(c->kind, n) + 1, 1);
        if (c->validity == NULL || c->values == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    const char *p = data.buf;
    const char *end = p + data.len;
    Py_ssize_t row = 0;
    int ok = 1;
    for (; ok && row < n; row++) {
        p = scan_object(p, end, cols, ncols, row, &mode);
        if (p == NULL) ok = 0;
    }
    if (ok && skip_ws(p, end) != end) ok = 0;
    if (!ok) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    result = PyList_New(ncols);
    if (result == NULL) goto done;
    for (int k = 0; k < ncols; k++) {
        PyObject *col = column_result(&cols[k], n);
        if (col == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, k, col);
    }
done:
    free_columns(cols, ncols);
    PyBuffer_Release(&data);
    PyBuffer_Release(&kinds);
    PyBuffer_Release(&required);
    return result;
}

/* Each column's emit flag and value rules: (gt, ge, min_len, max_len, choices[, nullable]), None where a rule
 * is absent; nullable (default true) says whether a null in an optional column is taken as absent.
 * gt and ge only on a float column, lengths and choices only on a string column. 0, or -1 with an error set. */
static int read_rules(Column *cols, int ncols, Py_buffer *emit, PyObject *rules) {
    if (emit->len != ncols || PyTuple_GET_SIZE(rules) != ncols) {
        PyErr_SetString(PyExc_ValueError, "scan_objects: bad rules");
        return -1;
    }
    for (int k = 0; k < ncols; k++) {
        Column *c = &cols[k];
        PyObject *gt, *ge, *choices;
        Py_ssize_t min_len, max_len;
        int nullable = 1;
        PyObject *rule = PyTuple_GET_ITEM(rules, k);
        c->emit = ((const unsigned char *)emit->buf)[k] != 0;
        if (!PyTuple_Check(rule) ||
            !PyArg_ParseTuple(rule, "OOnnO|p", &gt, &ge, &min_len, &max_len, &choices, &nullable)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "scan_objects: a rule is a tuple");
            return -1;
        }
        int numeric = gt != Py_None || ge != Py_None;
        int textual = min_len > 0 || max_len >= 0 || choices != Py_None;
        if ((numeric && c->kind != KIND_FLOAT) || (textual && c->kind != KIND_STR)) {
            PyErr_SetString(PyExc_ValueError, "scan_objects: a rule this column's kind does not take");
            return -1;
        }
        if ((c->has_gt = gt != Py_None) && (c->gt = PyFloat_AsDouble(gt)) == -1.0 && PyErr_Occurred()) return -1;
        if ((c->has_ge = ge != Py_None) && (c->ge = PyFloat_AsDouble(ge)) == -1.0 && PyErr_Occurred()) return -1;
        c->min_len = min_len;
        c->max_len = max_len;
        c->nullable = nullable;
        if (choices != Py_None) {
            if (!PyTuple_Check(choices)) {
                PyErr_SetString(PyExc_TypeError, "scan_objects: choices are a tuple of bytes");
                return -1;
            }
            for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(choices); i++) {
                if (!PyBytes_Check(PyTuple_GET_ITEM(choices, i))) {
                    PyErr_SetString(PyExc_TypeError, "scan_objects: choices are a tuple of bytes");
                    return -1;
                }
            }
            c->choices = choices; /* borrowed: the rules tuple outlives the scan */
        }
    }
    return 0;
}

PyDoc_STRVAR(scan_objects_doc,
             "scan_objects(payloads, names, kinds, required, emit, rules) -> list | None\n\n"
             "Each payload (bytes) one flat JSON object, as one list of values per column: str, float, int, bool,\n"
             "or None where a column is absent or null; a column whose emit byte is 0 is checked but given as None.\n"
             "Unknown keys with a scalar value are passed over. rules: one (gt, ge, min_len, max_len, choices[,\n"
             "nullable]) a column, each value keeping them; a null in a column not nullable is declined. None when any payload is one the plain path must judge (a rule\n"
             "broken included). kinds and required as for scan().");

static PyObject *scan_objects(PyObject *self, PyObject *args) {
    PyObject *payloads, *names, *rules;
    Py_buffer kinds, required, emit;
    if (!PyArg_ParseTuple(args, "O!O!y*y*y*O!", &PyList_Type, &payloads, &PyTuple_Type, &names, &kinds, &required,
                          &emit, &PyTuple_Type, &rules))
        return NULL;
    PyObject *result = NULL;
    Column cols[MAX_COLUMNS];
    memset(cols, 0, sizeof(cols));
    int ncols = 0;
    Mode mode = {1};
    Py_ssize_t n = PyList_GET_SIZE(payloads);
    if (read_spec(cols, names, &kinds, &required, &ncols) < 0) goto done;
    if (read_rules(cols, ncols, &emit, rules) < 0) goto done;
    if (n == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    for (int k = 0; k < ncols; k++) {
        if (!cols[k].emit) continue;
        cols[k].list = PyList_New(n);
        if (cols[k].list == NULL) goto done;
    }
    for (Py_ssize_t row = 0; row < n; row++) {
        PyObject *item = PyList_GET_ITEM(payloads, row);
        if (!PyBytes_Check(item)) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        const char *p = PyBytes_AS_STRING(item);
        const char *end = p + PyBytes_GET_SIZE(item);
        p = scan_object(p, end, cols, ncols, row, &mode);
        if (p == NULL || skip_ws(p, end) != end) {
            if (PyErr_Occurred()) goto done;
            result = Py_NewRef(Py_None);
            goto done;
        }
    }
    result = PyList_New(ncols);
    if (result == NULL) goto done;
    for (int k = 0; k < ncols; k++) {
        PyList_SET_ITEM(result, k, cols[k].emit ? cols[k].list : Py_NewRef(Py_None));
        cols[k].list = NULL;
    }
done:
    free_columns(cols, ncols);
    PyBuffer_Release(&kinds);
    PyBuffer_Release(&required);
    PyBuffer_Release(&emit);
    return result;
}

PyDoc_STRVAR(splice_doc,
             "splice(payloads, suffix) -> list | None\n\n"
             "Each payload (bytes) with its last byte, a closing brace, replaced by suffix; None unless every\n"
             "payload is bytes ending in a closing brace.");

static PyObject *splice(PyObject *self, PyObject *args) {
    PyObject *payloads;
    Py_buffer suffix;
    if (!PyArg_ParseTuple(args, "O!y*", &PyList_Type, &payloads, &suffix)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(payloads);
    PyObject *lines = PyList_New(n);
    if (lines == NULL) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(payloads, i);
        Py_ssize_t len = PyBytes_Check(item) ? PyBytes_GET_SIZE(item) : 0;
        if (len == 0 || PyBytes_AS_STRING(item)[len - 1] != '}') {
            Py_SETREF(lines, Py_NewRef(Py_None));
            goto done;
        }
        PyObject *line = PyBytes_FromStringAndSize(NULL, len - 1 + suffix.len);
        if (line == NULL) {
            Py_CLEAR(lines);
            goto done;
        }
        memcpy(PyBytes_AS_STRING(line), PyBytes_AS_STRING(item), (size_t)(len - 1));
        if (suffix.len) memcpy(PyBytes_AS_STRING(line) + len - 1, suffix.buf, (size_t)suffix.len);
        PyList_SET_ITEM(lines, i, line);
    }
done:
    PyBuffer_Release(&suffix);
    return lines;
}

PyDoc_STRVAR(fixed_seconds_doc,
             "fixed_seconds(times) -> list | None\n\n"
             "Each time of a list or tuple of str in the fixed form YYYY-MM-DDTHH:MM:SS.ffffffZ (ASCII digits, a valid\n"
             "calendar date, hour 0-23, minute 0-59, second 0-60) as float epoch seconds: the second's epoch\n"
             "plus ffffff / 1e6, as shared/timeparse.py computes it; None unless every time is one.");

/* Days from 1970-01-01 to y-m-d of the proleptic Gregorian calendar (y >= 1). */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {
    y -= m <= 2;
    int64_t era = y / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* The value of count digits (already checked to be digits) from s[from]. */
static inline void digits(const Py_UCS1 *s, int from, int count, int64_t *out) {
    int64_t v = 0;
    for (int i = from; i < from + count; i++) v = v * 10 + (s[i] - '0');
    *out = v;
}

/* The fixed form's characters: a str of 27 ASCII characters, digits where the template has them. */
static const Py_UCS1 *fixed_form(PyObject *item) {
    static const char TEMPLATE[] = "0000-00-00T00:00:00.000000Z";
    if (!PyUnicode_Check(item) || PyUnicode_READY(item) < 0 || !PyUnicode_IS_ASCII(item) ||
        PyUnicode_GET_LENGTH(item) != 27)
        return NULL;
    const Py_UCS1 *s = PyUnicode_1BYTE_DATA(item);
    for (int i = 0; i < 27; i++) {
        if (TEMPLATE[i] == '0' ? (s[i] < '0' || s[i] > '9') : s[i] != TEMPLATE[i]) return NULL;
    }
    return s;
}

/* One fixed-form time's value; 0 if it is not one. */
static int fixed_time(PyObject *item, double *out) {
    static const int DAYS[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    const Py_UCS1 *s = fixed_form(item);
    if (s == NULL) return 0;
    int64_t y, mo, d, h, mi, sec, frac;
    digits(s, 0, 4, &y);
    digits(s, 5, 2, &mo);
    digits(s, 8, 2, &d);
    digits(s, 11, 2, &h);
    digits(s, 14, 2, &mi);
    digits(s, 17, 2, &sec);
    digits(s, 20, 6, &frac);
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || sec > 60) return 0;
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (d > DAYS[mo - 1] + (mo == 2 && leap)) return 0;
    int64_t second = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec;
    *out = (double)second + (double)frac / 1e6;
    return 1;
}

PyDoc_STRVAR(all_fixed_form_doc,
             "all_fixed_form(times) -> bool\n\n"
             "Whether every item of a list or tuple is a str in the fixed form YYYY-MM-DDTHH:MM:SS.ffffffZ with ASCII\n"
             "digits (the form only, not the calendar), as shared/timeparse.py: all_fixed_form_reference says.");

/* A column of times' items and their number, for a list or a tuple; 0 with a TypeError for anything
 * else. (An empty list's items pointer may be NULL, so success is the return value, not the pointer.) */
static int time_items(PyObject *times, const char *name, PyObject ***items, Py_ssize_t *n) {
    if (!PyList_Check(times) && !PyTuple_Check(times)) {
        PyErr_Format(PyExc_TypeError, "%s() takes a list or a tuple", name);
        return 0;
    }
    *n = PySequence_Fast_GET_SIZE(times);
    *items = PySequence_Fast_ITEMS(times);
    return 1;
}

static PyObject *all_fixed_form(PyObject *self, PyObject *times) {
    Py_ssize_t n;
    PyObject **items;
    if (!time_items(times, "all_fixed_form", &items, &n)) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (fixed_form(items[i]) == NULL) Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

static PyObject *fixed_seconds(PyObject *self, PyObject *times) {
    Py_ssize_t n;
    PyObject **items;
    if (!time_items(times, "fixed_seconds", &items, &n)) return NULL;
    PyObject *out = PyList_New(n);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        double v;
        if (!fixed_time(items[i], &v)) {
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        PyObject *f = PyFloat_FromDouble(v);
        if (f == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, f);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {"scan_objects", scan_objects, METH_VARARGS, scan_objects_doc},
    {"splice", splice, METH_VARARGS, splice_doc},
    {"fixed_seconds", fixed_seconds, METH_O, fixed_seconds_doc},
    {"all_fixed_form", all_fixed_form, METH_O, all_fixed_form_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rowscan", "Flat JSON objects scanned into columns: the Parquet writer's and P2's ingest (see shared/parquet.py, shared/wire.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__rowscan(void) { return PyModule_Create(&module); }
