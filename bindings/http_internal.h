/*
** Shared by the http server files (http.c: the Lua surface and the
** connections; http_file.c: static files). Not part of the public API.
*/
#ifndef AH_HTTP_INTERNAL_H
#define AH_HTTP_INTERNAL_H

#include <stdint.h>

#include <llhttp.h>

#include "bindings.h"

#define HTTP_RBUF 65536      /* one read buffer per server, as Node.js has */
#define HTTP_MAX_HEADERS 100 /* more header lines than this: 431 */
#define HTTP_SERVER_MT "asynchost.http.server"
#define HTTP_REQ_MT "asynchost.http.request"

typedef struct http_server http_server;
typedef struct http_conn http_conn;

/* A header line of the request being read: offsets into conn->head. */
typedef struct http_hdr {
  uint32_t name, name_len, value, value_len;
} http_hdr;

/* A write in flight; pooled per server so a response costs no malloc. */
typedef struct http_wreq {
  uv_write_t req;
  struct http_wreq *next; /* free list */
  http_conn *conn;
  char *buf;
  size_t len, cap;
  int ref; /* registry ref keeping a large body string alive */
} http_wreq;

/* Connection states. */
enum {
  C_IDLE,     /* keep-alive, between requests */
  C_READING,  /* a request has begun arriving */
  C_HANDLING, /* its handler task runs */
  C_LINGER,   /* the response is out, our side shut down: draining input */
  C_CLOSED
};

/* The Lua request's handle on its connection (req._r); conn is NULL once
   the request is over. It carries a copy of the request's header lines
   (nhdr http_hdr, then hlen bytes they point into), from which
   req.headers is built when a handler first reads it. */
typedef struct http_req {
  http_conn *conn;
  uint32_t nhdr, hlen;
} http_req;

struct http_conn {
  uv_tcp_t tcp; /* first: the stream callbacks cast back */
  http_server *srv;
  http_conn *prev, *next;
  llhttp_t parser;
  char *head; /* request target, then header names and values */
  uint32_t hlen, hcap, url_len;
  http_hdr *hdrs;
  int nhdr, chdr;
  char *body;
  size_t blen, bcap;
  char *pend; /* bytes received while a handler runs (pipelining) */
  size_t plen, poff, pcap;
  uint64_t deadline; /* loop ms; 0: none */
  uint64_t t0;       /* uv_hrtime at the request's first byte */
  ah_task *task;     /* the handler task in flight */
  http_req *req;
  ah_task *waiter; /* a stream write waiting for the socket to drain */
  uv_shutdown_t shut;
  size_t sent; /* response body bytes, for the access log */
  int status;  /* response status, for the access log */
  int err_status;
  uint8_t state, method, http_major, http_minor;
  uint8_t keep_alive, close_after, head_only, upgrade;
  uint8_t streaming; /* 0, 1: chunked or close-delimited, 2: sized (files) */
  uint8_t chunked, in_value, timed_out, read_stopped, closing;
  uint8_t handle_closed, shutting;
};

struct http_server {
  ah_host *host;
  uv_tcp_t tcp;
  uv_timer_t sweep;
  http_conn *conns;
  int nconns;
  http_wreq *free_wreqs;
  int nfree;
  ah_task *closer;  /* a task waiting in srv:close() */
  http_server **ud; /* the Lua handle's pointer to us */
  int ref_self, ref_dispatch, ref_reqmt, ref_luamt, ref_keys, ref_sdt;
  int port;
  int listening; /* the listener handle is open */
  int draining;  /* close() or a shutdown began */
  int handles;   /* listener + sweep timer not closed yet */
  int freed_hooks;
  size_t max_body, max_header;
  uint64_t idle_ms, request_ms, force_at;
  int max_conns, access_log, worker_ppid;
  time_t date_sec;
  char date[48];
  size_t date_len;
  char rbuf[HTTP_RBUF];
};

/* http.c */
http_wreq *http_wreq_get(http_server *s, size_t need);
int http_wreq_reserve(http_wreq *w, size_t need);
void http_wreq_put(http_server *s, http_wreq *w);
int http_write_head(http_conn *c, lua_State *L, http_wreq *w, int status,
                    int hidx, const char *ctype, int64_t clen, char *err,
                    size_t errlen);
int http_send(http_conn *c, http_wreq *w, const char *extra, size_t elen);
void http_conn_abort(http_conn *c);
http_conn *http_check_req(lua_State *L, int idx);
/* Serves the connected stream socket fd as an accepted connection (fuzz/
   feeds raw requests through a socketpair). 0, or a libuv error and fd
   is left open. */
int http_open_fd(http_server *s, int fd);

/* http_file.c */
int http_l_sendfile(lua_State *L);

#endif
