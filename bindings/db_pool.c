/*
** Connection pools: up to `size` connections to one server, opened on
** demand. A query goes to the least busy connection that has room in its
** pipeline (an idle one first); the pool grows while all are busy.
** Leases (transaction, with) take a connection of their own. Requests no
** connection can take wait in order. Connections that die are dropped and
** replaced by the next request that needs one; idle ones are closed after
** idle_timeout and counted as "idle.db.conn" (they keep nothing alive).
*/
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "db_conn.h"

static void on_conn_event(db_conn *c, int event);

db_pool *db_pool_new(db_host *dh, const char *dsn, int size, int pipeline,
                     double idle_timeout, int cache_cap) {
  db_pool *p = db_alloc(sizeof *p);
  p->dh = dh;
  p->dsn = db_strdup(dsn);
  p->size = size;
  p->pipeline = pipeline;
  p->idle_timeout = idle_timeout;
  p->cache_cap = cache_cap;
  p->conns = db_alloc(sizeof *p->conns * (size_t)size);
  p->refs = 1;
  dh->refs++;
  p->next = dh->pools;
  if (dh->pools) dh->pools->prev = p;
  dh->pools = p;
  p->idle_timer = db_alloc(sizeof *p->idle_timer);
  uv_timer_init(ah_host_loop(dh->host), p->idle_timer);
  uv_unref((uv_handle_t *)p->idle_timer);
  p->idle_timer->data = p;
  p->refs++; /* the timer's, until it is closed */
  return p;
}

static void unlink_pool(db_pool *p) {
  db_host *dh = p->dh;
  if (p->prev)
    p->prev->next = p->next;
  else if (dh->pools == p)
    dh->pools = p->next;
  if (p->next) p->next->prev = p->prev;
  p->next = p->prev = NULL;
}

static void maybe_free(db_pool *p) {
  if (p->refs > 0 || p->nconns > 0) return;
  unlink_pool(p);
  db_host_unref(p->dh);
  free(p->conns);
  free(p->dsn);
  free(p);
}

void db_pool_unref(db_pool *p) {
  p->refs--;
  maybe_free(p);
}

/* Takes c out of the pool (the pool's reference goes with it). */
static void drop(db_pool *p, db_conn *c) {
  int i;
  for (i = 0; i < p->nconns; i++)
    if (p->conns[i] == c) {
      p->conns[i] = p->conns[--p->nconns];
      c->pool = NULL;
      c->on_event = NULL;
      if (c->state == DB_C_RESOLVING || c->state == DB_C_CONNECTING)
        p->nconnecting--;
      db_conn_unref(c);
      return;
    }
}

static int idle(const db_conn *c) {
  return c->state == DB_C_READY && c->nops == 0 && !c->lent;
}

static void on_idle_timer(uv_timer_t *t);

static void arm(db_pool *p, uint64_t ms) {
  if (p->idle_timeout <= 0 || p->closed) return;
  if (uv_is_active((uv_handle_t *)p->idle_timer) &&
      uv_timer_get_due_in(p->idle_timer) <= ms)
    return;
  uv_timer_start(p->idle_timer, on_idle_timer, ms, 0);
}

/* Counts c as busy or idle; an idle one starts its idle time. */
static void mark(db_pool *p, db_conn *c) {
  if (c->state != DB_C_READY) return;
  if (idle(c)) {
    if (!c->kind || strcmp(c->kind, "idle.db.conn") != 0) {
      db_conn_set_kind(c, "idle.db.conn");
      c->idle_since = uv_now(ah_host_loop(p->dh->host));
      arm(p, (uint64_t)(p->idle_timeout * 1000));
    }
  } else
    db_conn_set_kind(c, "db.conn");
}

static void on_idle_timer(uv_timer_t *t) {
  db_pool *p = t->data;
  uint64_t now = uv_now(t->loop), limit = (uint64_t)(p->idle_timeout * 1000);
  uint64_t next = UINT64_MAX;
  int i;
  p->refs++;
  for (i = p->nconns - 1; i >= 0; i--) {
    db_conn *c = p->conns[i];
    if (!idle(c)) continue;
    if (now - c->idle_since >= limit) {
      db_conn_ref(c);
      drop(p, c);
      db_conn_close(c, "idle for too long");
      db_conn_unref(c);
      i = p->nconns; /* the list moved: look again */
    } else if (limit - (now - c->idle_since) < next)
      next = limit - (now - c->idle_since);
  }
  if (next != UINT64_MAX) arm(p, next);
  db_pool_unref(p);
}

static int can_grow(db_pool *p) {
  return !p->closed && p->nconns < p->size &&
         uv_now(ah_host_loop(p->dh->host)) >= p->no_growth_until;
}

/* The connection that should take a request: an idle one; else none
   while the pool may grow or is opening connections (the request waits
   for its own, as in any pool); else, the pool being full, the least busy
   one with room in its pipeline (a lease: the least busy). */
static db_conn *pick(db_pool *p, int excl) {
  db_conn *best = NULL;
  int i, bestload = INT_MAX;
  for (i = 0; i < p->nconns; i++) {
    db_conn *c = p->conns[i];
    if (c->state != DB_C_READY || c->lent) continue;
    if (!excl && c->nops >= p->pipeline) continue;
    if (c->nops < bestload) {
      best = c;
      bestload = c->nops;
    }
  }
  if (best && bestload > 0 && (can_grow(p) || p->nconnecting > 0)) return NULL;
  return best;
}

static void grow(db_pool *p) {
  char err[512];
  db_conn *c = db_conn_new(p->dh, p->dsn, p->cache_cap, err, sizeof err);
  if (!c) { /* the string was checked when the pool was made: memory */
    db_op *w = db_list_pop(&p->waiters);
    if (w) {
      w->err = db_strdup(err);
      db_op_complete(w);
    }
    return;
  }
  c->pool = p;
  c->on_event = on_conn_event;
  p->conns[p->nconns++] = c;
  p->nconnecting++;
  if (c->state == DB_C_BROKEN) on_conn_event(c, DB_EV_FAILED); /* at once */
}

/* Hands waiting requests to connections that can take them, in order,
   and opens connections for those that are left. */
static void give(db_pool *p, db_conn *c, db_op *w) {
  if (w->kind == DB_LEASE) {
    c->lent = 1;
    w->granted = c;
    db_conn_ref(c);
    w->granted_lease = db_conn_lease(c);
    mark(p, c);
    db_op_complete(w);
  } else {
    db_conn_submit(c, w);
    if (c->pool == p) mark(p, c);
  }
}

static void kick(db_pool *p) {
  db_op *w;
  if (p->kicking) {
    p->rekick = 1;
    return;
  }
  p->kicking = 1;
  p->refs++;
  do {
    p->rekick = 0;
    while ((w = p->waiters.head) != NULL) {
      db_conn *c = pick(p, w->kind == DB_LEASE);
      if (!c) break;
      db_list_remove(w);
      w->pool = NULL;
      give(p, c, w);
    }
    while (p->waiters.n > p->nconnecting && can_grow(p)) grow(p);
  } while (p->rekick);
  p->kicking = 0;
  db_pool_unref(p);
}

void db_pool_submit(db_pool *p, db_op *op) {
  db_conn *c;
  if (p->closed) {
    db_op_fail(op, "closed", "the pool is closed");
    db_op_complete(op);
    return;
  }
  if (p->waiters.n == 0 && (c = pick(p, op->kind == DB_LEASE)) != NULL) {
    give(p, c, op);
    return;
  }
  op->pool = p;
  op->state = DB_POOLWAIT;
  db_list_push(&p->waiters, op);
  kick(p);
}

static int ready_conns(db_pool *p) {
  int i, n = 0;
  for (i = 0; i < p->nconns; i++) n += p->conns[i]->state == DB_C_READY;
  return n;
}

/* a connection the closed pool no longer needs */
static void retire(db_pool *p, db_conn *c) {
  db_conn_ref(c);
  drop(p, c);
  db_conn_close(c, "the pool is closed");
  db_conn_unref(c);
}

static void on_conn_event(db_conn *c, int event) {
  db_pool *p = c->pool;
  db_op *w;
  if (!p) return;
  p->refs++;
  switch (event) {
  case DB_EV_CONNECTED:
    p->nconnecting--;
    if (p->closed) {
      retire(p, c);
      break;
    }
    mark(p, c);
    kick(p);
    break;
  case DB_EV_FAILED:
    p->nconnecting--;
    db_conn_ref(c);
    drop(p, c);
    if (ready_conns(p) > 0) {
      /* the others serve meanwhile; try growing again in a while */
      p->no_growth_until = uv_now(ah_host_loop(p->dh->host)) + 1000;
    } else if ((w = db_list_pop(&p->waiters)) != NULL) {
      /* the first in line learns why; the next gets another try */
      w->err = db_strdup(c->error ? c->error : "connect: failed");
      db_op_complete(w);
    }
    db_conn_unref(c);
    kick(p);
    break;
  case DB_EV_PROGRESS:
    if (p->closed && idle(c)) {
      retire(p, c);
      break;
    }
    mark(p, c);
    kick(p);
    break;
  case DB_EV_BROKEN:
    drop(p, c);
    kick(p);
    break;
  }
  db_pool_unref(p);
}

void db_pool_release(db_pool *p, db_conn *c, unsigned lease) {
  if (c->held_by != lease) return;
  db_conn_ref(c);
  if (c->pool == p) {
    c->lent = 0;
    if (c->state == DB_C_READY && c->listening) {
      db_note *n;
      db_conn_internal(c, "UNLISTEN *");
      c->listening = 0;
      while ((n = db_conn_pop_note(c)) != NULL) db_note_free(n);
    }
  }
  db_conn_release(c, lease);
  if (c->pool == p) {
    p->refs++;
    if (p->closed && idle(c)) {
      drop(p, c);
      db_conn_close(c, "the pool is closed");
    } else {
      mark(p, c);
      kick(p);
    }
    db_pool_unref(p);
  }
  db_conn_unref(c);
}

static void on_timer_closed(uv_handle_t *h) {
  db_pool *p = h->data;
  free(h);
  db_pool_unref(p);
}

void db_pool_close(db_pool *p) {
  db_op *w;
  int i;
  if (p->closed) return;
  p->closed = 1;
  p->refs++;
  unlink_pool(p);
  while ((w = db_list_pop(&p->waiters)) != NULL) {
    db_op_fail(w, "closed", "the pool is closed");
    db_op_complete(w);
  }
  for (i = p->nconns - 1; i >= 0; i--) {
    db_conn *c = p->conns[i];
    if (idle(c) || c->state != DB_C_READY || p->dh->closed) {
      db_conn_ref(c);
      drop(p, c);
      db_conn_close(c, p->dh->closed ? "the host is closing"
                                     : "the pool is closed");
      db_conn_unref(c);
      i = p->nconns; /* the list moved: look again */
    }
  }
  ah_host_close_handle(p->dh->host, (uv_handle_t *)p->idle_timer,
                       on_timer_closed);
  p->idle_timer = NULL;
  db_pool_unref(p);
}
