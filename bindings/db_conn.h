/*
** The PostgreSQL connection engine under bindings/db.c: one libpq
** connection driven without blocking by a uv_poll on its socket, in
** pipeline mode, so that the queries of many tasks share round trips.
**
** Everything that waits is a db_op: a query, a prepared statement, a
** script, a COPY, a task waiting for a notification, for a lease on the
** connection or for a pool connection. An op that a task waits for
** resumes the task when it is done; the task's continuation reads the
** outcome and frees the op. An op nobody waits for (orphaned by a
** cancellation, or internal such as ROLLBACK) is freed by the engine.
**
** Nothing here calls Lua.
*/
#ifndef AH_DB_CONN_H
#define AH_DB_CONN_H

#include <libpq-fe.h>

#include "bindings.h"

typedef struct db_host db_host;
typedef struct db_conn db_conn;
typedef struct db_op db_op;
typedef struct db_stmt db_stmt;
typedef struct db_pool db_pool;
typedef struct db_note db_note;

/* A doubly-linked list of ops; an op is on one list at a time. */
typedef struct db_list {
  db_op *head, *tail;
  int n;
} db_list;

enum db_kind {
  DB_QUERY,   /* one statement in the pipeline */
  DB_PREPARE, /* Parse + Describe of a cached statement (internal) */
  DB_EXEC,    /* a multi-statement script, pipeline off */
  DB_COPY,    /* COPY ... FROM STDIN, pipeline off */
  DB_CONNECT, /* db.connect waiting for its connection */
  DB_NOTIFY,  /* conn:notification() waiting */
  DB_LEASE    /* waiting for exclusive use of a connection */
};

enum db_state {
  DB_NEW,
  DB_POOLWAIT,  /* on the pool's waiters */
  DB_LEASEWAIT, /* on the connection's lease waiters */
  DB_HELD,      /* the connection is lent to someone else */
  DB_PENDING,   /* queued to be sent */
  DB_SENT,      /* sent; its results are coming */
  DB_WAITING,   /* DB_CONNECT and DB_NOTIFY while they wait */
  DB_DONE
};

/* One parameter: text (format 0) unless the server takes raw bytes. */
typedef struct db_param {
  const char *val; /* NULL: SQL NULL */
  int len;
  unsigned char str; /* came from a Lua string (bytea may take it raw) */
} db_param;

struct db_op {
  db_op *next, *prev;
  db_list *list;
  db_host *dh;
  db_conn *conn; /* referenced while set */
  db_pool *pool; /* DB_POOLWAIT: the pool it waits on */
  ah_task *task; /* the waiting task; NULL: nobody waits */
  int kind, state;
  unsigned lease;           /* the lease it was made under (0: none) */
  unsigned char nocache;    /* never prepare this SQL (LISTEN, ROLLBACK, ...) */
  unsigned char retried;    /* already re-sent after a stale statement */
  unsigned char copy_phase; /* DB_COPY: 0 statement, 1 data, 2 end sent */
  unsigned char excl;       /* DB_LEASE: the lease is exclusive (pool) */
  unsigned char abandoned;  /* its task was cancelled: results are dropped */
  int sub;                  /* results of this many commands seen */
  /* the request */
  char *sql;
  int nparams;
  db_param *params;
  char *copy; /* DB_COPY: the data in COPY text format */
  size_t copy_len, copy_off;
  db_stmt *stmt;
  /* the outcome */
  PGresult *res; /* the last command's result */
  char *err;     /* "kind: detail" when it failed */
  char *sqlstate;
  /* DB_NOTIFY */
  ah_timer timer;
  double timeout;
  db_note *note;
  /* DB_LEASE: what was granted */
  db_conn *granted;
  unsigned granted_lease;
};

/* A received notification. */
struct db_note {
  db_note *next;
  PGnotify *n;
};

/* Connection states. */
enum { DB_C_RESOLVING, DB_C_CONNECTING, DB_C_READY, DB_C_BROKEN, DB_C_CLOSED };

/* Events a connection tells its owner (a pool). */
enum { DB_EV_CONNECTED, DB_EV_FAILED, DB_EV_PROGRESS, DB_EV_BROKEN };

typedef void (*db_event_fn)(db_conn *c, int event);

struct db_conn {
  db_conn *next, *prev; /* the host's live connections */
  db_host *dh;
  ah_host *host;
  PGconn *pg;
  uv_poll_t *poll;
  int fd, events, poll_ref;
  int state;
  int refs;
  char *error;      /* why it failed or broke: "kind: detail" */
  const char *kind; /* the count it is in ("db.conn", "idle.db.conn") */
  /* connecting */
  char **kw, **val; /* the connection options, NULL-terminated */
  int nkw;
  char **hosts, **ports; /* the host entries to resolve, one port each */
  int nhosts, ihost, nports;
  char *host_out, *addr_out, *port_out; /* the lists given to libpq */
  char *dns_error;
  uv_getaddrinfo_t *gai;
  db_op *connect_op;
  ah_timer ctimer;
  double connect_timeout;
  int step; /* how far the connection got (PQstatus at best) */
  /* ops */
  int nops;             /* ops attached and not done */
  db_list pending;      /* to send, in order */
  db_list sent;         /* sent, results due in this order */
  db_list held;         /* made by others while the connection is lent */
  db_list leasewait;    /* tasks waiting for a lease */
  db_list notewait;     /* tasks waiting for a notification */
  db_op *excl;          /* the DB_EXEC or DB_COPY on the wire */
  db_op *cancel_target; /* a cancel request was sent for it */
  int cancelling;       /* the cancel request is in the thread pool */
  int want_write;
  int cork;              /* 1: TCP, may be corked; -1: cannot */
  db_conn *next_touched; /* on dh->touched: sent this loop turn */
  int touched, corked;
  const char **scratch_vals; /* parameter arrays for libpq, reused */
  int *scratch_lens, *scratch_fmts, scratch_cap;
  int copy_out; /* draining a COPY TO STDOUT nobody asked for */
  /* leases */
  unsigned held_by, next_lease;
  int lent; /* a pool lent it out */
  int listening;
  /* prepared statements */
  db_stmt **buckets;
  int nbuckets, nstmts, cache_cap;
  db_stmt *lru_head, *lru_tail; /* most recently used first */
  unsigned next_stmt;
  /* notifications */
  db_note *notes, *notes_tail;
  int nnotes;
  /* the owner */
  db_pool *pool;
  db_event_fn on_event;
  uint64_t idle_since; /* uv_now when it last became idle in a pool */
};

/* Per-host state: the live connections and pools, closed with the host. */
struct db_host {
  ah_host *host;
  db_conn *conns;
  db_pool *pools;
  int refs;
  int closed;
  uv_prepare_t *uncork;             /* once per loop turn, before it waits */
  db_conn *touched;                 /* connections that sent in this turn */
  int (*ssl_pending)(const void *); /* OpenSSL's, if libpq loaded it */
};

/* ---- db_conn.c ---------------------------------------------------------- */

/* Starts connecting to dsn (URI or key=value). Returns NULL with a
   "db: ..." message in err when the string is not a connection string. */
db_conn *db_conn_new(db_host *dh, const char *dsn, int cache_cap, char *err,
                     size_t errlen);
/* db.connect's op waits for the connection to be ready (or fail). */
void db_conn_wait_connect(db_conn *c, db_op *op);
/* Checks a connection string without connecting. */
int db_conn_check_dsn(const char *dsn, char *err, size_t errlen);
void db_conn_ref(db_conn *c);
void db_conn_unref(db_conn *c);
/* Ends the connection: its ops fail with "closed: <why>". */
void db_conn_close(db_conn *c, const char *why);
/* Counts the connection as kind ("db.conn" or "idle.db.conn"). */
void db_conn_set_kind(db_conn *c, const char *kind);
int db_conn_usable(const db_conn *c);

/* Ops. */
db_op *db_op_new(db_host *dh, int kind, const char *sql, size_t len);
/* Sets the op's parameters from a packed block made by the caller: the
   op takes the block (freed with the op). */
void db_op_set_params(db_op *op, int n, db_param *params);
void db_op_free(db_op *op);
void db_op_fail(db_op *op, const char *kind, const char *fmt, ...);
/* Queues op on c (or completes it at once with an error). */
void db_conn_submit(db_conn *c, db_op *op);
/* Fire and forget: runs sql on c after what is queued, bypassing leases. */
void db_conn_internal(db_conn *c, const char *sql);
/* The waiting task gave up (cancel hook): discards the op's outcome; a
   query alone in flight gets a PostgreSQL cancel request. */
void db_op_abandon(db_op *op);
/* Marks op done and resumes its task (or frees it if nobody waits). */
void db_op_complete(db_op *op);

/* Leases: exclusive use of a connection by one task and its helpers. */
unsigned db_conn_lease(db_conn *c);
/* Ends the lease: rolls back an open transaction, stops listening, then
   lets the ops held meanwhile (or the next lease waiter) go. */
void db_conn_release(db_conn *c, unsigned lease);
void db_conn_wait_lease(db_conn *c, db_op *op);

/* Notifications. */
db_note *db_conn_pop_note(db_conn *c);
void db_conn_unpop_note(db_conn *c, db_note *n);
void db_note_free(db_note *n);
void db_conn_wait_note(db_conn *c, db_op *op);
/* Hands queued notifications to waiting tasks. */
void db_conn_deliver_notes(db_conn *c);

/* Per-host state, made by ah_open_db. */
db_host *db_host_new(ah_host *h);
/* Closes everything when the host goes. */
void db_host_close(db_host *dh);
void db_host_unref(db_host *dh);

/* ---- db_pool.c ---------------------------------------------------------- */

struct db_pool {
  db_pool *next, *prev; /* the host's pools */
  db_host *dh;
  char *dsn;
  int size, pipeline, cache_cap;
  double idle_timeout;
  db_conn **conns;
  int nconns, nconnecting;
  db_list waiters;
  uv_timer_t *idle_timer;
  int closed, refs;
  int kicking, rekick;      /* kick() is running / must run again */
  uint64_t no_growth_until; /* uv_now: a connection just failed to open */
};

db_pool *db_pool_new(db_host *dh, const char *dsn, int size, int pipeline,
                     double idle_timeout, int cache_cap);
/* Sends op through one of the pool's connections, or queues it until
   one is free (a DB_LEASE op waits for a connection of its own). */
void db_pool_submit(db_pool *p, db_op *op);
/* A lease on a pool connection ended: the connection goes back. */
void db_pool_release(db_pool *p, db_conn *c, unsigned lease);
void db_pool_close(db_pool *p);
void db_pool_unref(db_pool *p);

/* Shared helpers: allocation failures abort, as the host does. */
void *db_alloc(size_t n);
char *db_strdup(const char *s);
char *db_strfmt(const char *fmt, ...);
void db_list_push(db_list *l, db_op *op);
void db_list_remove(db_op *op);
db_op *db_list_pop(db_list *l);

#endif
