/*
** html.parse and its documents and nodes, on libxml2's HTML parser.
**
** libxml2 builds an HTML4-style tree: it adds the implied html, head and
** body elements but not an implied tbody, so "table > tr" matches what
** the markup says. doc:select translates CSS selectors to XPath 1.0 and
** lets libxml2 evaluate them. Documents over PARSE_INLINE_MAX bytes are
** parsed on the libuv thread pool so a 10 MB page does not stall every
** other task; smaller ones parse at once (faster than a round trip to a
** thread). doc:links resolves with libcurl's URL API (url.c).
*/
#include <curl/curl.h>
#include <libxml/HTMLparser.h>
#include <libxml/HTMLtree.h>
#include <libxml/xpath.h>
#include <libxml/xpathInternals.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"

/* url.c */
void ah__url_open(lua_State *L, int mod);
CURLU *ah__url_base(const char *s);
char *ah__url_link(CURLU *base, const char *ref, size_t len);

#define DOC_MT "asynchost.html.doc"
#define NODE_MT "asynchost.html.node"
#define PARSE_INLINE_MAX (1024 * 1024)

typedef struct hdoc {
  xmlDocPtr doc; /* NULL once closed */
  char *base;    /* opts.base_url, or NULL */
} hdoc;

typedef struct hnode {
  xmlNodePtr node; /* the document is the node's user value 1 */
} hnode;

/* ---- parsing --------------------------------------------------------------
 */

/* The charset in "text/html; charset=x" (or a bare name), or NULL when
   libxml2 does not know it: the document's own declaration is used then. */
static char *pick_encoding(const char *enc) {
  const char *p = enc ? strstr(enc, "charset=") : NULL;
  size_t n;
  char *name;
  xmlCharEncodingHandlerPtr h;
  if (!enc) return NULL;
  if (p) {
    p += 8;
    if (*p == '"' || *p == '\'') p++;
    n = strcspn(p, "\"'; \t");
  } else if (strchr(enc, '/') || strchr(enc, ';')) {
    return NULL; /* a content type without a charset */
  } else {
    p = enc;
    n = strlen(p);
  }
  if (n == 0 || n > 64 || !(name = malloc(n + 1))) return NULL;
  memcpy(name, p, n);
  name[n] = '\0';
  h = xmlFindCharEncodingHandler(name);
  if (!h) {
    free(name);
    return NULL;
  }
  xmlCharEncCloseFunc(h);
  return name;
}

/* Never NULL unless out of memory: bad markup is recovered from, and an
   empty input gives an empty document. */
static xmlDocPtr parse_html(const char *s, size_t len, const char *enc) {
  const int opts = HTML_PARSE_RECOVER | HTML_PARSE_NOERROR |
                   HTML_PARSE_NOWARNING | HTML_PARSE_NONET | HTML_PARSE_COMPACT;
  xmlDocPtr doc = NULL;
  if (len > 0 && len <= INT_MAX)
    doc = htmlReadMemory(s, (int)len, NULL, enc, opts);
  if (!doc) doc = htmlNewDocNoDtD(NULL, NULL);
  return doc;
}

static hdoc *check_doc(lua_State *L, int idx) {
  hdoc *d = luaL_checkudata(L, idx, DOC_MT);
  if (!d->doc) luaL_error(L, "html: the document is closed");
  return d;
}

/* Pushes a closed document userdata: nothing leaks if a later step fails. */
static hdoc *new_doc(lua_State *L, const char *base) {
  hdoc *d = lua_newuserdatauv(L, sizeof *d, 0);
  d->doc = NULL;
  d->base = NULL;
  luaL_setmetatable(L, DOC_MT);
  if (base && !(d->base = strdup(base))) luaL_error(L, "html: out of memory");
  return d;
}

/* Lua's collector does not see libxml2's memory: make it step as if the
   document's size had been allocated, so a crawl does not pile up trees. */
static void account(lua_State *L, size_t len) {
  if (len >= 4096) lua_gc(L, LUA_GCSTEP, (int)(len / 1024 * 4));
}

typedef struct parse_op {
  uv_work_t req;
  ah_host *host;
  ah_task *task; /* NULL once the caller is cancelled */
  char *buf;     /* a copy: the Lua string may be gone if we are cancelled */
  size_t len;
  char *enc;
  xmlDocPtr doc;
} parse_op;

static void parse_op_free(parse_op *op) {
  if (op->doc) xmlFreeDoc(op->doc);
  free(op->buf);
  free(op->enc);
  free(op);
}

static void parse_work(uv_work_t *req) {
  parse_op *op = req->data;
  op->doc = parse_html(op->buf, op->len, op->enc);
}

static void parse_after(uv_work_t *req, int status) {
  parse_op *op = req->data;
  (void)status;
  ah_host_count(op->host, "html.parse", -1);
  free(op->buf);
  op->buf = NULL;
  if (!op->task) { /* cancelled: nobody waits */
    parse_op_free(op);
    return;
  }
  ah_task_resume(op->task);
}

static void parse_cancel(void *data) {
  parse_op *op = data;
  op->task = NULL;                 /* parse_after frees op */
  uv_cancel((uv_req_t *)&op->req); /* if it has not started yet */
}

/* [s opts doc] */
static int parse_k(lua_State *L, int status, lua_KContext ctx) {
  parse_op *op = (parse_op *)ctx;
  hdoc *d = lua_touserdata(L, 3);
  (void)status;
  d->doc = op->doc;
  op->doc = NULL;
  parse_op_free(op);
  if (!d->doc) return luaL_error(L, "html.parse: out of memory");
  account(L, lua_rawlen(L, 1));
  lua_settop(L, 3);
  return 1;
}

/* opts[name]: a string (kept alive by the table), nil, or an error. */
static const char *opt_string(lua_State *L, int idx, const char *name) {
  const char *s = NULL;
  int t = lua_getfield(L, idx, name);
  if (t == LUA_TSTRING)
    s = lua_tostring(L, -1);
  else if (t != LUA_TNIL)
    luaL_error(L, "html.parse: opts.%s must be a string", name);
  lua_pop(L, 1);
  return s;
}

/* html.parse(s [, opts | base_url]) -> doc */
static int l_parse(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  const char *base = NULL, *encname = NULL;
  char *enc;
  hdoc *d;
  if (lua_type(L, 2) == LUA_TSTRING)
    base = lua_tostring(L, 2);
  else if (lua_type(L, 2) == LUA_TTABLE) {
    base = opt_string(L, 2, "base_url");
    encname = opt_string(L, 2, "encoding");
  } else if (!lua_isnoneornil(L, 2))
    luaL_typeerror(L, 2, "table or string");
  lua_settop(L, 2);
  if (len > PARSE_INLINE_MAX) {
    ah_task *t = ah_task_check(L, "html.parse");
    parse_op *op;
    d = new_doc(L, base);
    op = calloc(1, sizeof *op);
    if (!op || !(op->buf = malloc(len))) {
      free(op);
      return luaL_error(L, "html.parse: out of memory");
    }
    memcpy(op->buf, s, len);
    op->len = len;
    op->enc = pick_encoding(encname);
    op->host = ah_task_host(t);
    op->task = t;
    op->req.data = op;
    if (uv_queue_work(ah_host_loop(op->host), &op->req, parse_work,
                      parse_after) != 0) {
      parse_op_free(op);
      return luaL_error(L, "html.parse: cannot queue work");
    }
    ah_host_count(op->host, "html.parse", 1);
    return ah_task_suspend(L, parse_cancel, op, parse_k, (lua_KContext)op);
  }
  d = new_doc(L, base);
  enc = pick_encoding(encname);
  d->doc = parse_html(s, len, enc);
  free(enc);
  if (!d->doc) return luaL_error(L, "html.parse: out of memory");
  account(L, len);
  return 1;
}

/* ---- walking the tree ------------------------------------------------------
 */

/* The node after n in document order within top (depth first). */
static xmlNodePtr walk_next(xmlNodePtr n, xmlNodePtr top) {
  if ((n->type == XML_ELEMENT_NODE || n->type == XML_HTML_DOCUMENT_NODE ||
       n->type == XML_DOCUMENT_NODE) &&
      n->children)
    return n->children;
  while (n && n != top) {
    if (n->next) return n->next;
    n = n->parent;
  }
  return NULL;
}

static int is_tag(xmlNodePtr n, const char *name) {
  return n->type == XML_ELEMENT_NODE && n->name &&
         strcmp((const char *)n->name, name) == 0;
}

static xmlNodePtr find_first(xmlDocPtr doc, const char *name) {
  xmlNodePtr n;
  for (n = (xmlNodePtr)doc; n; n = walk_next(n, (xmlNodePtr)doc))
    if (is_tag(n, name)) return n;
  return NULL;
}

static int is_space(int c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}

/* Pushes s with runs of white space made one space, trimmed. */
static void push_collapsed(lua_State *L, const char *s) {
  luaL_Buffer b;
  int space = 0;
  luaL_buffinit(L, &b);
  while (is_space((unsigned char)*s)) s++;
  for (; *s; s++) {
    if (is_space((unsigned char)*s))
      space = 1;
    else {
      if (space) luaL_addchar(&b, ' ');
      space = 0;
      luaL_addchar(&b, *s);
    }
  }
  luaL_pushresult(&b);
}

/* ---- nodes -----------------------------------------------------------------
 */

/* Pushes a node object for n, which belongs to the document at doc_idx. */
static void push_node(lua_State *L, int doc_idx, xmlNodePtr n) {
  hnode *h;
  doc_idx = lua_absindex(L, doc_idx);
  h = lua_newuserdatauv(L, sizeof *h, 1);
  h->node = n;
  lua_pushvalue(L, doc_idx);
  lua_setiuservalue(L, -2, 1);
  luaL_setmetatable(L, NODE_MT);
}

/* The node at idx; raises if its document was closed. */
static xmlNodePtr check_node(lua_State *L, int idx) {
  hnode *h = luaL_checkudata(L, idx, NODE_MT);
  hdoc *d;
  lua_getiuservalue(L, idx, 1);
  d = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (!d || !d->doc) luaL_error(L, "html: the node's document is closed");
  return h->node;
}

/* Pushes the text content of n (all descendant text), or "". */
static void push_content(lua_State *L, xmlNodePtr n) {
  xmlChar *s = xmlNodeGetContent(n);
  lua_pushstring(L, s ? (const char *)s : "");
  xmlFree(s);
}

/* node:text() -> all the text inside the node, as written */
static int node_text(lua_State *L) {
  push_content(L, check_node(L, 1));
  return 1;
}

/* node:attr(name) -> value | nil */
static int node_attr(lua_State *L) {
  xmlNodePtr n = check_node(L, 1);
  const char *name = luaL_checkstring(L, 2);
  xmlChar *v;
  if (n->type != XML_ELEMENT_NODE) return 0;
  v = xmlGetProp(n, (const xmlChar *)name);
  if (!v) return 0;
  lua_pushstring(L, (const char *)v);
  xmlFree(v);
  return 1;
}

/* node:attrs() -> {name = value, ...} */
static int node_attrs(lua_State *L) {
  xmlNodePtr n = check_node(L, 1);
  xmlAttrPtr a;
  lua_newtable(L);
  if (n->type != XML_ELEMENT_NODE) return 1;
  for (a = n->properties; a; a = a->next) {
    xmlChar *v = xmlNodeGetContent((xmlNodePtr)a);
    lua_pushstring(L, v ? (const char *)v : "");
    xmlFree(v);
    lua_setfield(L, -2, (const char *)a->name);
  }
  return 1;
}

/* Pushes the HTML serialization of n (its outer HTML), UTF-8. */
static void push_html(lua_State *L, xmlDocPtr doc, xmlNodePtr n) {
  xmlOutputBufferPtr out = xmlAllocOutputBuffer(NULL);
  const xmlChar *s;
  if (!out) luaL_error(L, "html: out of memory");
  if (n == (xmlNodePtr)doc)
    htmlDocContentDumpFormatOutput(out, doc, "UTF-8", 0);
  else
    htmlNodeDumpFormatOutput(out, doc, n, "UTF-8", 0);
  xmlOutputBufferFlush(out);
  s = xmlOutputBufferGetContent(out);
  lua_pushlstring(L, s ? (const char *)s : "", xmlOutputBufferGetSize(out));
  xmlOutputBufferClose(out);
}

/* node:html() -> the node's outer HTML */
static int node_html(lua_State *L) {
  xmlNodePtr n = check_node(L, 1);
  push_html(L, n->doc, n);
  return 1;
}

static const char *node_tag(xmlNodePtr n) {
  switch (n->type) {
  case XML_ELEMENT_NODE:
    return (const char *)n->name;
  case XML_TEXT_NODE:
    return "#text";
  case XML_COMMENT_NODE:
    return "#comment";
  case XML_HTML_DOCUMENT_NODE:
  case XML_DOCUMENT_NODE:
    return "#document";
  default:
    return "#node";
  }
}

static int node_select(lua_State *L);
static int node_xpath(lua_State *L);

static const luaL_Reg node_methods[] = {
    {"text", node_text}, {"attr", node_attr},     {"attrs", node_attrs},
    {"html", node_html}, {"select", node_select}, {"xpath", node_xpath},
    {NULL, NULL}};

/* node.tag (lower-case element name) and the methods */
static int node_index(lua_State *L) {
  xmlNodePtr n = check_node(L, 1);
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "tag") == 0) {
    lua_pushstring(L, node_tag(n));
    return 1;
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_getfield(L, -1, k);
  return 1;
}

static int node_eq(lua_State *L) {
  hnode *a = luaL_checkudata(L, 1, NODE_MT);
  hnode *b = luaL_checkudata(L, 2, NODE_MT);
  lua_pushboolean(L, a->node == b->node);
  return 1;
}

static int node_tostring(lua_State *L) {
  hnode *h = luaL_checkudata(L, 1, NODE_MT);
  lua_pushfstring(L, "html.node <%s> (%p)", node_tag(h->node), (void *)h);
  return 1;
}

/* ---- XPath ------------------------------------------------------------------
 */

typedef struct xp_err {
  int code, pos; /* libxml2 leaves the message out for XPath errors */
} xp_err;

static void xp_on_error(void *data, xmlErrorPtr e) {
  xp_err *err = data;
  if (err->code || !e) return;
  err->code = e->code - XML_XPATH_EXPRESSION_OK + XPATH_EXPRESSION_OK;
  err->pos = e->int1;
}

/* Some XPath errors go straight to libxml2's generic error function. */
static void xp_quiet(void *ctx, const char *msg, ...) {
  (void)ctx;
  (void)msg;
}

static const char *xp_reason(int code) {
  switch (code) {
  case XPATH_NUMBER_ERROR:
    return "bad number";
  case XPATH_UNFINISHED_LITERAL_ERROR:
    return "unfinished string";
  case XPATH_START_LITERAL_ERROR:
    return "expected a string";
  case XPATH_VARIABLE_REF_ERROR:
  case XPATH_UNDEF_VARIABLE_ERROR:
    return "undefined variable";
  case XPATH_INVALID_PREDICATE_ERROR:
    return "bad predicate";
  case XPATH_UNCLOSED_ERROR:
    return "missing closing bracket";
  case XPATH_UNKNOWN_FUNC_ERROR:
    return "unknown function";
  case XPATH_INVALID_OPERAND:
    return "bad operand";
  case XPATH_INVALID_TYPE:
    return "wrong type";
  case XPATH_INVALID_ARITY:
    return "wrong number of arguments";
  case XPATH_UNDEF_PREFIX_ERROR:
    return "undefined namespace prefix";
  case XPATH_INVALID_CHAR_ERROR:
    return "invalid character";
  case XPATH_MEMORY_ERROR:
    return "out of memory";
  default:
    return "invalid expression";
  }
}

/* Pushes the result of expr evaluated at ctx (the document at doc_idx):
   a node set as a list (elements as nodes; text and attributes as their
   strings), or a number, string or boolean. Raises on a bad expression,
   saying which; what names the caller in the message. */
static void eval_xpath(lua_State *L, int doc_idx, xmlNodePtr ctx,
                       const char *expr, const char *what, const char *src) {
  hdoc *d = lua_touserdata(L, doc_idx);
  xmlXPathContextPtr xc = xmlXPathNewContext(d->doc);
  xmlXPathObjectPtr r;
  xp_err err;
  int i, n;
  if (!xc) luaL_error(L, "html: out of memory");
  err.code = err.pos = 0;
  xc->node = ctx;
  xc->error = xp_on_error;
  xc->userData = &err;
  {
    xmlGenericErrorFunc old = xmlGenericError;
    void *old_ctx = xmlGenericErrorContext;
    xmlSetGenericErrorFunc(NULL, xp_quiet);
    r = xmlXPathEvalExpression((const xmlChar *)expr, xc);
    xmlSetGenericErrorFunc(old_ctx, old);
  }
  xmlXPathFreeContext(xc);
  if (!r) {
    if (err.code)
      luaL_error(L, "%s: bad expression '%s': %s at position %d", what, src,
                 xp_reason(err.code), err.pos + 1);
    luaL_error(L, "%s: bad expression '%s'", what, src);
    return;
  }
  switch (r->type) {
  case XPATH_NODESET:
    n = r->nodesetval ? r->nodesetval->nodeNr : 0;
    lua_createtable(L, n, 0);
    for (i = 0; i < n; i++) {
      xmlNodePtr x = r->nodesetval->nodeTab[i];
      if (x->type == XML_ELEMENT_NODE || x->type == XML_HTML_DOCUMENT_NODE ||
          x->type == XML_DOCUMENT_NODE)
        push_node(L, doc_idx, x);
      else if (x->type == XML_NAMESPACE_DECL)
        continue;
      else
        push_content(L, x);
      lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    }
    break;
  case XPATH_BOOLEAN:
    lua_pushboolean(L, r->boolval);
    break;
  case XPATH_NUMBER:
    if (r->floatval >= -9007199254740992.0 &&
        r->floatval <= 9007199254740992.0 && /* first: the cast needs it */
        r->floatval == (double)(lua_Integer)r->floatval)
      lua_pushinteger(L, (lua_Integer)r->floatval);
    else
      lua_pushnumber(L, r->floatval);
    break;
  case XPATH_STRING:
    lua_pushstring(L, r->stringval ? (const char *)r->stringval : "");
    break;
  default:
    lua_pushnil(L);
    break;
  }
  xmlXPathFreeObject(r);
}

/* ---- CSS selectors to XPath -------------------------------------------------
   A selector list is translated to a union of XPath location paths
   relative to the context node, so "div.a > p, #x" becomes
   "descendant::div[...]/child::p | descendant::*[@id='x']". The buffers
   live in a userdata whose __gc frees them, so a raised error leaks
   nothing. */

typedef struct sbuf {
  char *p;
  size_t n, cap;
} sbuf;

typedef struct css {
  lua_State *L;
  const char *src, *p;
  sbuf out, name, value; /* the XPath; the tokens being read */
} css;

static void css_fail(css *c, const char *what) {
  luaL_error(c->L, "html: invalid selector '%s': %s at position %d", c->src,
             what, (int)(c->p - c->src) + 1);
}

static void sb_add(css *c, sbuf *b, const char *s, size_t len) {
  if (b->n + len + 1 > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 256;
    char *p;
    while (cap < b->n + len + 1) cap *= 2;
    if (!(p = realloc(b->p, cap))) luaL_error(c->L, "html: out of memory");
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, len);
  b->n += len;
  b->p[b->n] = '\0';
}

static void out(css *c, const char *s) {
  sb_add(c, &c->out, s, strlen(s));
}

static void sb_char(css *c, sbuf *b, char ch) {
  sb_add(c, b, &ch, 1);
}

static void css_free(css *c) {
  free(c->out.p);
  free(c->name.p);
  free(c->value.p);
  c->out.p = c->name.p = c->value.p = NULL;
}

static int css_gc(lua_State *L) {
  css_free(lua_touserdata(L, 1));
  return 0;
}

static void css_ws(css *c) {
  while (is_space((unsigned char)*c->p)) c->p++;
}

static int hexval(int ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

static void add_utf8(css *c, sbuf *b, unsigned long cp) {
  char u[4];
  size_t n = 0;
  if (cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 0xFFFD;
  if (cp < 0x80)
    u[n++] = (char)cp;
  else if (cp < 0x800) {
    u[n++] = (char)(0xC0 | (cp >> 6));
    u[n++] = (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    u[n++] = (char)(0xE0 | (cp >> 12));
    u[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
    u[n++] = (char)(0x80 | (cp & 0x3F));
  } else {
    u[n++] = (char)(0xF0 | (cp >> 18));
    u[n++] = (char)(0x80 | ((cp >> 12) & 0x3F));
    u[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
    u[n++] = (char)(0x80 | (cp & 0x3F));
  }
  sb_add(c, b, u, n);
}

/* After a backslash: a CSS escape (up to 6 hex digits and one space, or
   any other character as itself). */
static void css_escape(css *c, sbuf *b) {
  unsigned long cp = 0;
  int n = 0;
  if (!*c->p || *c->p == '\n') css_fail(c, "bad escape");
  while (n < 6 && hexval((unsigned char)*c->p) >= 0) {
    cp = cp * 16 + (unsigned long)hexval((unsigned char)*c->p++);
    n++;
  }
  if (n > 0) {
    add_utf8(c, b, cp);
    if (is_space((unsigned char)*c->p)) c->p++;
  } else
    sb_char(c, b, *c->p++);
}

static int ident_char(int ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
         (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch >= 0x80;
}

/* Reads an identifier into b (lower-cased when fold: HTML names); fails
   with what unless one starts here. */
static void css_ident(css *c, sbuf *b, int fold, const char *what) {
  const char *start = c->p;
  b->n = 0;
  sb_add(c, b, "", 0);
  if ((start[0] >= '0' && start[0] <= '9') ||
      (start[0] == '-' && start[1] >= '0' && start[1] <= '9'))
    css_fail(c, what);
  for (;;) {
    int ch = (unsigned char)*c->p;
    if (ch == '\\') {
      c->p++;
      css_escape(c, b);
    } else if (ident_char(ch)) {
      if (fold && ch >= 'A' && ch <= 'Z') ch = ch - 'A' + 'a';
      sb_char(c, b, (char)ch);
      c->p++;
    } else
      break;
  }
  if (c->p == start) css_fail(c, what);
}

/* Reads a quoted string or an identifier (attribute values) into b. */
static void css_value(css *c, sbuf *b) {
  char q = *c->p;
  if (q != '"' && q != '\'') {
    css_ident(c, b, 0, "expected a value");
    return;
  }
  c->p++;
  b->n = 0;
  sb_add(c, b, "", 0);
  while (*c->p != q) {
    if (!*c->p) css_fail(c, "unterminated string");
    if (*c->p == '\\') {
      c->p++;
      if (*c->p == '\n')
        c->p++;
      else
        css_escape(c, b);
    } else
      sb_char(c, b, *c->p++);
  }
  c->p++;
}

/* Adds s as an XPath string literal. XPath has no escapes, and a
   control character (from a CSS escape or a quoted value) is not an XML
   character its parser would read. */
static void out_literal(css *c, const char *s, size_t len) {
  size_t i, j;
  for (i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch < 0x20 && ch != '\t' && ch != '\n' && ch != '\r')
      css_fail(c, "a control character cannot be matched");
  }
  if (!memchr(s, '\'', len)) {
    out(c, "'");
    sb_add(c, &c->out, s, len);
    out(c, "'");
  } else if (!memchr(s, '"', len)) {
    out(c, "\"");
    sb_add(c, &c->out, s, len);
    out(c, "\"");
  } else { /* both quotes: concat('it', "'", 's') */
    out(c, "concat(''");
    for (i = 0; i < len; i = j) {
      out(c, ",");
      if (s[i] == '\'') {
        out(c, "\"'\"");
        j = i + 1;
      } else {
        for (j = i; j < len && s[j] != '\''; j++) {
        }
        out(c, "'");
        sb_add(c, &c->out, s + i, j - i);
        out(c, "'");
      }
    }
    out(c, ")");
  }
}

static void out_lit(css *c, const sbuf *b) {
  out_literal(c, b->p, b->n);
}

/* A name usable as an XPath name test as it is. */
static int plain_name(const char *s) {
  if (!((*s >= 'a' && *s <= 'z') || *s == '_')) return 0;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_' ||
          *s == '-' || *s == '.'))
      return 0;
  return 1;
}

/* Adds @name, or @*[name()='...'] for a name XPath cannot spell. */
static void out_attr(css *c) {
  if (plain_name(c->name.p)) {
    out(c, "@");
    out(c, c->name.p);
  } else {
    out(c, "@*[name()=");
    out_lit(c, &c->name);
    out(c, "]");
  }
}

/* [attr], [attr=v], [attr~=v], [attr|=v], [attr^=v], [attr$=v], [attr*=v] */
static void css_attrib(css *c) {
  char op = 0;
  c->p++; /* [ */
  css_ws(c);
  css_ident(c, &c->name, 1, "expected an attribute name");
  css_ws(c);
  out(c, "[");
  if (*c->p == ']') {
    c->p++;
    out_attr(c);
    out(c, "]");
    return;
  }
  if (*c->p == '=')
    op = '=';
  else if (*c->p && strchr("~|^$*", *c->p) && c->p[1] == '=')
    op = *c->p++;
  else
    css_fail(c, "expected ']' or an attribute operator");
  c->p++; /* = */
  css_ws(c);
  css_value(c, &c->value);
  css_ws(c);
  if (*c->p != ']') {
    if (*c->p && strchr("iIsS", *c->p))
      css_fail(c, "attribute case flags are not supported");
    css_fail(c, "expected ']'");
  }
  c->p++;
  if ((op != '=' && op != '|' && c->value.n == 0) ||
      (op == '~' && strpbrk(c->value.p, " \t\n\r\f"))) {
    out(c, "false()"); /* CSS: such a value matches nothing */
  } else
    switch (op) {
    case '=':
      out_attr(c);
      out(c, "=");
      out_lit(c, &c->value);
      break;
    case '^':
      out(c, "starts-with(");
      out_attr(c);
      out(c, ",");
      out_lit(c, &c->value);
      out(c, ")");
      break;
    case '*':
      out(c, "contains(");
      out_attr(c);
      out(c, ",");
      out_lit(c, &c->value);
      out(c, ")");
      break;
    case '~':
      out(c, "contains(concat(' ',normalize-space(");
      out_attr(c);
      out(c, "),' '),concat(' ',");
      out_lit(c, &c->value);
      out(c, ",' '))");
      break;
    case '$': /* substring(@a, string-length(@a) - string-length(v) + 1) = v */
      out(c, "substring(");
      out_attr(c);
      out(c, ",string-length(");
      out_attr(c);
      out(c, ")-string-length(");
      out_lit(c, &c->value);
      out(c, ")+1)=");
      out_lit(c, &c->value);
      break;
    default: /* '|': @a = v or starts-with(@a, concat(v, '-')) */
      out_attr(c);
      out(c, "=");
      out_lit(c, &c->value);
      out(c, " or starts-with(");
      out_attr(c);
      out(c, ",concat(");
      out_lit(c, &c->value);
      out(c, ",'-'))");
      break;
    }
  out(c, "]");
}

/* :first-child, :last-child, :only-child, :nth-child(n), :empty */
static void css_pseudo(css *c) {
  const char *name;
  c->p++; /* : */
  if (*c->p == ':') css_fail(c, "pseudo-elements are not supported");
  css_ident(c, &c->name, 1, "expected a pseudo-class name");
  name = c->name.p;
  if (strcmp(name, "first-child") == 0)
    out(c, "[not(preceding-sibling::*)]");
  else if (strcmp(name, "last-child") == 0)
    out(c, "[not(following-sibling::*)]");
  else if (strcmp(name, "only-child") == 0)
    out(c, "[not(preceding-sibling::*) and not(following-sibling::*)]");
  else if (strcmp(name, "empty") == 0)
    out(c, "[not(*) and not(text())]"); /* comments do not count */
  else if (strcmp(name, "nth-child") == 0) {
    long n = 0;
    int digits = 0;
    char num[32];
    if (*c->p != '(') css_fail(c, "expected '(' after :nth-child");
    c->p++;
    css_ws(c);
    while (*c->p >= '0' && *c->p <= '9' && digits < 9) {
      n = n * 10 + (*c->p++ - '0');
      digits++;
    }
    css_ws(c);
    if (!digits || n < 1 || *c->p != ')')
      css_fail(c, ":nth-child takes a positive integer here");
    c->p++;
    snprintf(num, sizeof num, "%ld", n - 1);
    out(c, "[count(preceding-sibling::*)=");
    out(c, num);
    out(c, "]");
  } else {
    lua_pushfstring(c->L, "unsupported pseudo-class ':%s'", name);
    css_fail(c, lua_tostring(c->L, -1));
  }
}

/* A compound selector: [tag|*] then #id .class [attr] :pseudo, at axis. */
static void css_compound(css *c, const char *axis) {
  int any = 0;
  out(c, axis);
  if (*c->p == '*') {
    c->p++;
    out(c, "*");
    any = 1;
  } else if (ident_char((unsigned char)*c->p) || *c->p == '\\') {
    css_ident(c, &c->name, 1, "expected a tag name");
    if (plain_name(c->name.p))
      out(c, c->name.p);
    else {
      out(c, "*[name()=");
      out_lit(c, &c->name);
      out(c, "]");
    }
    any = 1;
  } else
    out(c, "*");
  for (;;) {
    switch (*c->p) {
    case '#':
      c->p++;
      css_ident(c, &c->value, 0, "expected an id after '#'");
      out(c, "[@id=");
      out_lit(c, &c->value);
      out(c, "]");
      break;
    case '.':
      c->p++;
      css_ident(c, &c->value, 0, "expected a class name after '.'");
      out(c, "[contains(concat(' ',normalize-space(@class),' '),concat(' ',");
      out_lit(c, &c->value);
      out(c, ",' '))]");
      break;
    case '[':
      css_attrib(c);
      break;
    case ':':
      css_pseudo(c);
      break;
    default:
      if (!any) css_fail(c, "expected a selector");
      return;
    }
    any = 1;
  }
}

static void css_combined(css *c, char comb) {
  switch (comb) {
  case '>':
    css_compound(c, "child::");
    break;
  case '+':
    css_compound(c, "following-sibling::*[1]/self::");
    break;
  case '~':
    css_compound(c, "following-sibling::");
    break;
  default:
    css_compound(c, "descendant::");
    break;
  }
}

/* A complex selector: compounds joined by combinators. It may start
   with one ("> p"), relative to the context node. */
static void css_complex(css *c) {
  if (*c->p == '>' || *c->p == '+' || *c->p == '~') {
    char comb = *c->p++;
    css_ws(c);
    css_combined(c, comb);
  } else
    css_compound(c, "descendant::");
  for (;;) {
    const char *before = c->p;
    char comb;
    css_ws(c);
    comb = *c->p;
    if (comb == '\0' || comb == ',') return;
    if (comb == '>' || comb == '+' || comb == '~') {
      c->p++;
      css_ws(c);
    } else if (c->p > before)
      comb = ' ';
    else
      css_fail(c, "unexpected character");
    if (*c->p == '\0' || *c->p == ',')
      css_fail(c, "expected a selector after a combinator");
    switch (comb) {
    case '>':
      css_compound(c, "/child::");
      break;
    case '+':
      css_compound(c, "/following-sibling::*[1]/self::");
      break;
    case '~':
      css_compound(c, "/following-sibling::");
      break;
    default:
      css_compound(c, "/descendant::");
      break;
    }
  }
}

/* Pushes the XPath for the selector list src. */
static void css_to_xpath(lua_State *L, const char *src) {
  css *c = lua_newuserdatauv(L, sizeof *c, 0);
  memset(c, 0, sizeof *c);
  if (luaL_newmetatable(L, "asynchost.html.css")) {
    lua_pushcfunction(L, css_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  c->L = L;
  c->src = c->p = src;
  for (;;) {
    css_ws(c);
    if (!*c->p) css_fail(c, "expected a selector");
    css_complex(c);
    css_ws(c);
    if (!*c->p) break;
    c->p++; /* , */
    out(c, " | ");
  }
  lua_pushlstring(L, c->out.p, c->out.n);
  css_free(c);
  lua_remove(L, -2);
}

/* Shared by doc and node: select(css) and xpath(expr) at ctx. */
static int do_select(lua_State *L, int doc_idx, xmlNodePtr ctx) {
  const char *sel = luaL_checkstring(L, 2);
  css_to_xpath(L, sel);
  eval_xpath(L, doc_idx, ctx, lua_tostring(L, -1), "html: select", sel);
  return 1;
}

static int do_xpath(lua_State *L, int doc_idx, xmlNodePtr ctx) {
  const char *expr = luaL_checkstring(L, 2);
  eval_xpath(L, doc_idx, ctx, expr, "html: xpath", expr);
  return 1;
}

/* node:select(css) -> nodes below node */
static int node_select(lua_State *L) {
  xmlNodePtr n = check_node(L, 1);
  lua_getiuservalue(L, 1, 1);
  lua_replace(L, 1); /* doc css */
  return do_select(L, 1, n);
}

/* node:xpath(expr) -> value, with node as the context node */
static int node_xpath(lua_State *L) {
  xmlNodePtr n = check_node(L, 1);
  lua_getiuservalue(L, 1, 1);
  lua_replace(L, 1);
  return do_xpath(L, 1, n);
}

/* ---- documents
 * ---------------------------------------------------------------- */

/* doc:select(css) -> nodes, in document order */
static int doc_select(lua_State *L) {
  hdoc *d = check_doc(L, 1);
  return do_select(L, 1, (xmlNodePtr)d->doc);
}

/* doc:xpath(expr) -> nodes | number | string | boolean */
static int doc_xpath(lua_State *L) {
  hdoc *d = check_doc(L, 1);
  return do_xpath(L, 1, (xmlNodePtr)d->doc);
}

/* doc:title() -> the first <title>'s text, white space collapsed | nil */
static int doc_title(lua_State *L) {
  hdoc *d = check_doc(L, 1);
  xmlNodePtr t = find_first(d->doc, "title");
  xmlChar *s;
  if (!t) return 0;
  s = xmlNodeGetContent(t);
  push_collapsed(L, s ? (const char *)s : "");
  xmlFree(s);
  return 1;
}

/* doc:html() -> the whole document serialized */
static int doc_html(lua_State *L) {
  hdoc *d = check_doc(L, 1);
  push_html(L, d->doc, (xmlNodePtr)d->doc);
  return 1;
}

/* doc:root() -> the <html> element node (or nil for an empty document) */
static int doc_root(lua_State *L) {
  hdoc *d = check_doc(L, 1);
  xmlNodePtr r = xmlDocGetRootElement(d->doc);
  if (!r) return 0;
  push_node(L, 1, r);
  return 1;
}

/* Strips what HTML strips from a URL attribute: leading and trailing
   white space, and tabs and newlines anywhere. Returns the length. */
static size_t clean_href(const char *s, char *out, size_t cap) {
  size_t n = 0, end;
  while (is_space((unsigned char)*s)) s++;
  for (; *s && n < cap; s++)
    if (*s != '\t' && *s != '\n' && *s != '\r') out[n++] = *s;
  end = n;
  while (end > 0 && is_space((unsigned char)out[end - 1])) end--;
  return end;
}

/* doc:links([base_url]) -> absolute http(s) URLs of <a href> and
   <area href>, in document order, without fragments, each once. The base
   is the argument, else <base href> (itself resolved against
   opts.base_url), else opts.base_url; with no base only absolute links
   are kept. */
static int doc_links(lua_State *L) {
  hdoc *d = check_doc(L, 1);
  const char *arg = luaL_optstring(L, 2, NULL);
  CURLU *base = NULL;
  xmlNodePtr n, top = (xmlNodePtr)d->doc;
  char stack[1024], *buf = stack;
  size_t cap = sizeof stack;
  lua_Integer count = 0;
  lua_settop(L, 2);
  if (arg)
    base = ah__url_base(arg);
  else {
    xmlNodePtr b = find_first(d->doc, "base");
    xmlChar *href = b ? xmlGetProp(b, (const xmlChar *)"href") : NULL;
    if (href) {
      CURLU *outer = d->base ? ah__url_base(d->base) : NULL;
      char *abs =
          ah__url_link(outer, (const char *)href, strlen((const char *)href));
      if (abs) {
        base = ah__url_base(abs);
        curl_free(abs);
      }
      if (outer) curl_url_cleanup(outer);
      xmlFree(href);
    }
    if (!base && d->base) base = ah__url_base(d->base);
  }
  lua_newtable(L); /* 3: seen */
  lua_newtable(L); /* 4: result */
  for (n = top; n; n = walk_next(n, top)) {
    xmlAttrPtr a;
    const char *href = NULL;
    size_t len, need;
    char *abs;
    if (n->type != XML_ELEMENT_NODE || !(is_tag(n, "a") || is_tag(n, "area")))
      continue;
    for (a = n->properties; a; a = a->next)
      if (strcmp((const char *)a->name, "href") == 0) break;
    if (!a) continue;
    if (a->children && a->children->type == XML_TEXT_NODE && !a->children->next)
      href = (const char *)a->children->content;
    else {
      /* rare: entity references split the value; let libxml2 join it */
      xmlChar *v = xmlNodeGetContent((xmlNodePtr)a);
      lua_pushstring(L, v ? (const char *)v : "");
      xmlFree(v);
      lua_replace(L, 2);
      href = lua_tostring(L, 2);
    }
    if (!href) href = "";
    need = strlen(href) + 1;
    if (need > cap) {
      char *nb = buf == stack ? malloc(need) : realloc(buf, need);
      if (!nb) continue;
      buf = nb;
      cap = need;
    }
    len = clean_href(href, buf, cap);
    abs = ah__url_link(base, buf, len);
    if (!abs) continue;
    lua_pushstring(L, abs);
    curl_free(abs);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, 3) != LUA_TNIL) {
      lua_pop(L, 2);
      continue;
    }
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_pushboolean(L, 1);
    lua_rawset(L, 3);
    lua_rawseti(L, 4, ++count);
  }
  if (buf != stack) free(buf);
  if (base) curl_url_cleanup(base);
  return 1;
}

static int doc_close(lua_State *L) {
  hdoc *d = luaL_checkudata(L, 1, DOC_MT);
  if (d->doc) xmlFreeDoc(d->doc);
  d->doc = NULL;
  free(d->base);
  d->base = NULL;
  return 0;
}

static int doc_tostring(lua_State *L) {
  hdoc *d = luaL_checkudata(L, 1, DOC_MT);
  lua_pushfstring(L, d->doc ? "html.doc (%p)" : "html.doc (closed)", (void *)d);
  return 1;
}

/* ---- the module ------------------------------------------------------------
 */

static int l_crawl_preload(lua_State *L) {
  lua_getfield(L, lua_upvalueindex(1), "_load");
  lua_pushliteral(L, "crawl");
  lua_call(L, 1, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_call(L, 1, 1);
  return 1;
}

void ah_open_html(lua_State *L, int mod) {
  static const luaL_Reg doc_methods[] = {
      {"title", doc_title}, {"select", doc_select},
      {"xpath", doc_xpath}, {"links", doc_links},
      {"html", doc_html},   {"root", doc_root},
      {"close", doc_close}, {NULL, NULL}};
  static const luaL_Reg funcs[] = {{"parse", l_parse}, {NULL, NULL}};
  mod = lua_absindex(L, mod);
  xmlInitParser(); /* before any thread of the pool parses */
  luaL_newmetatable(L, DOC_MT);
  luaL_newlib(L, doc_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, doc_close);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, doc_close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, doc_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  luaL_newmetatable(L, NODE_MT);
  luaL_newlib(L, node_methods);
  lua_pushcclosure(L, node_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, node_eq);
  lua_setfield(L, -2, "__eq");
  lua_pushcfunction(L, node_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  lua_setfield(L, mod, "html");
  ah__url_open(L, mod);
  /* require "asynchost.crawl": the crawler core (lua/crawl.lua) */
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushvalue(L, mod);
  lua_pushcclosure(L, l_crawl_preload, 1);
  lua_setfield(L, -2, "asynchost.crawl");
  lua_pop(L, 1);
}
