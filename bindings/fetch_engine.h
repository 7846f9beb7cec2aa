/*
** The fetch engine: one libcurl multi handle per host, driven by
** curl_multi_socket_action from libuv (a uv_poll per socket, one uv_timer
** for curl's timeouts). bindings/fetch.c is the Lua surface on top of it.
**
** A transfer (xfer) is an easy handle plus what one request needs; both
** are recycled through a free list, so a request allocates nothing once
** the engine is warm.
*/
#ifndef AH_FETCH_ENGINE_H
#define AH_FETCH_ENGINE_H

#include <stdint.h>

#include <curl/curl.h>

#include "bindings.h"

typedef struct fetch_engine fetch_engine;
typedef struct fetch_xfer fetch_xfer;
typedef struct fetch_out fetch_out;
typedef struct fetch_slot fetch_slot;

/* The kinds a failed request reports (its "<kind>: ..." prefix). */
enum {
  FK_NONE,
  FK_DNS,
  FK_CONNECT,
  FK_TLS,
  FK_TIMEOUT,
  FK_TOO_LARGE,
  FK_CLOSED,
  FK_HTTP,
  FK_IO,
  FK_COUNT
};
extern const char *const fetch_kind_names[FK_COUNT];

/* Where a transfer is in its life. */
enum {
  XS_IDLE,     /* on the free list */
  XS_QUEUED,   /* waiting for a per_host/total slot */
  XS_OPENING,  /* opening its output file */
  XS_RUNNING,  /* in the multi handle */
  XS_FLUSHING, /* transfer over, output still being written and closed */
  XS_DONE      /* results ready; the task was resumed */
};

struct fetch_xfer {
  fetch_engine *e;
  CURL *easy;
  ah_task *task;
  fetch_xfer *next, *prev;   /* free list or wait queue */
  fetch_xfer *lnext, *lprev; /* the engine's live transfers */
  int state;
  int cancelled;     /* the task went away: finish quietly, then recycle */
  CURLcode result;   /* what curl said */
  int fail;          /* FK_* decided by us (too_large, io), or FK_NONE */
  char *fail_detail; /* malloc'd detail for fail, may be NULL */
  char errbuf[CURL_ERROR_SIZE];
  struct curl_slist *headers;
  char *body; /* the body in memory (reused between requests) */
  size_t len, cap;
  curl_off_t max_size;
  curl_off_t received;
  char *hostkey;      /* "host:port" for per_host, malloc'd */
  fetch_slot *slot;   /* the per_host counter it holds, if any */
  int holds_slot;     /* counted in e->active */
  fetch_out *out;     /* the output file, if any */
  curl_socket_t sock; /* the socket curl last asked to watch for it */
  unsigned defaults;  /* e->defaults its easy handle is set up for, or 0 */
  int plain; /* set only options every request sets: recycled unreset */
};

struct fetch_engine {
  ah_host *host;
  uv_loop_t *loop;
  CURLM *multi;
  CURLSH *share;
  uv_timer_t *timer;         /* curl's one timeout */
  uv_async_t *alive;         /* ref'd while transfers run: keeps the loop up */
  struct fetch_sock **socks; /* by file descriptor */
  size_t nsocks;
  fetch_xfer *free_list;
  int nfree;
  fetch_xfer *live;    /* transfers given out and not yet released */
  int running;         /* easy handles in the multi */
  int maxconnects;     /* connection cache size: twice the peak of running */
  int maxconnects_cap; /* ... but at most a quarter of RLIMIT_NOFILE */
  int closed;
  int async_dns; /* libcurl resolves off the loop (AsynchDNS) */
  /* limits on requests in flight; 0 = unlimited */
  long per_host, total;
  long active;
  unsigned defaults; /* bumped when the options every request starts from
                        change (user_agent) */
  int pumping, pump_again;
  fetch_xfer *wait_head, *wait_tail;
  fetch_slot **slots; /* per-host counters, hashed */
  char *user_agent;
  /* stats */
  uint64_t requests, reused, bytes, stale_fds;
  int socket_errno; /* the last socket() failure, for connect: errors */
  uint64_t errors[FK_COUNT];
  long sockets; /* open sockets we own */
};

/* A new engine for host h, freed when the host closes (AH_ON_CLOSE).
   Nothing of curl is made until fetch_engine_ready. NULL: out of memory. */
fetch_engine *fetch_engine_new(ah_host *h);

/* Makes the multi handle, share handle and timer on first use. Returns 0,
   or -1 with a message in err. */
int fetch_engine_ready(fetch_engine *e, char *err, size_t errlen);

/* Sets the limits on requests in flight (a negative value: unchanged;
   0: unlimited) and starts what they now allow. */
void fetch_engine_limits(fetch_engine *e, long per_host, long total);

/* A clean transfer with its easy handle set to the engine's defaults.
   NULL when out of memory. Counted as a live "fetch". */
fetch_xfer *fetch_xfer_new(fetch_engine *e);

/* Sets the output file to open before the transfer starts. */
int fetch_xfer_output(fetch_xfer *x, const char *path);

/* The output file's path, or NULL if the body is kept in memory. */
const char *fetch_xfer_output_path(fetch_xfer *x);

/* Starts it now, or queues it behind the limits. Returns 0, or a FK_*
   kind when it failed at once (the detail is in x). Once started, the
   task is resumed when it ends (x->state == XS_DONE). */
int fetch_xfer_start(fetch_xfer *x, ah_task *task);

/* The task's cancel hook: aborts at once whatever x is doing. */
void fetch_xfer_cancel(void *data);

/* Recycles a transfer whose results have been read. */
void fetch_xfer_release(fetch_xfer *x);

/* The FK_* kind of a finished transfer and its detail text. */
int fetch_xfer_error(fetch_xfer *x, const char **detail);

/* Records a failure decided by the engine's user, with a detail. */
void fetch_xfer_fail(fetch_xfer *x, int kind, const char *fmt, ...);

#endif
