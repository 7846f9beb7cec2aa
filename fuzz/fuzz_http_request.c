/*
** The HTTP server's request handling: raw bytes in through llhttp, our
** callbacks, limits, routing (lua/http.lua) and handlers
** (fuzz_http_request.lua), responses out. Each input is written to a
** fresh connection (a socketpair given to the server with
** http_open_fd); the harness reads what comes back, then closes its end
** and checks that the server lets the connection go. What the server
** writes must parse as HTTP/1.1 responses (unless a HEAD request makes
** bodies unknowable from the bytes alone).
*/
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <lauxlib.h>

#include "../bindings/http_internal.h"
#include "fuzz.h"

#define OUT_MAX (1 << 20)
#define SETTLE_MS 500 /* waiting for the server to answer what it can */
#define CLOSE_MS 3000 /* after our close, the connection must go */

static http_server *srv;
static char out[OUT_MAX];
static size_t out_len;

static http_server *start_server(void) {
  lua_State *L = ah_host_lua(fz_host());
  http_server **ud;
  fz_call(fz_load("fuzz_http_request"), NULL, 0, 5000);
  lua_getglobal(L, "FUZZ_APP");
  lua_getfield(L, -1, "_srv");
  ud = luaL_testudata(L, -1, HTTP_SERVER_MT);
  if (!ud || !*ud) {
    fprintf(fz_err, "fuzz: no server\n");
    abort();
  }
  lua_pop(L, 2);
  return *ud;
}

static void drain(int fd) {
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) {
    size_t k = (size_t)n;
    if (k > OUT_MAX - out_len) k = OUT_MAX - out_len;
    memcpy(out + out_len, buf, k);
    out_len += k;
  }
}

/* The server has done what it can with the bytes it got: it waits for
   more, lingers after its FIN, or is gone. */
static int settled(void) {
  http_conn *c = srv->conns;
  int unread = 0;
  uv_os_fd_t fd;
  if (!c || c->closing) return 1;
  if (c->task || c->state == C_HANDLING) return 0;
  if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > 0) return 0;
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) ioctl(fd, FIONREAD, &unread);
  return unread == 0;
}

static int response_body_skip(llhttp_t *p) {
  (void)p;
  return 0;
}

/* Every byte the server wrote belongs to a well-formed response. */
static void check_responses(const uint8_t *data, size_t size) {
  llhttp_settings_t st;
  llhttp_t p;
  llhttp_errno_t err;
  if (out_len == 0) return;
  if (out_len < 9 || memcmp(out, "HTTP/1.1 ", 9) != 0) {
    fprintf(fz_err, "fuzz: the server wrote %.*s\n", (int)out_len, out);
    abort();
  }
  if (out_len == OUT_MAX || memmem(data, size, "HEAD", 4)) return;
  llhttp_settings_init(&st);
  st.on_headers_complete = response_body_skip;
  llhttp_init(&p, HTTP_RESPONSE, &st);
  err = llhttp_execute(&p, out, out_len);
  if (err == HPE_OK) err = llhttp_finish(&p);
  if (err != HPE_OK) {
    fprintf(fz_err, "fuzz: a bad response (%s: %s) at byte %zu of:\n%.*s\n",
            llhttp_errno_name(err), llhttp_get_error_reason(&p),
            (size_t)(llhttp_get_error_pos(&p) - out), (int)out_len, out);
    abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int sv[2], rc;
  size_t off = 0;
  uint64_t t0;
  if (!srv) srv = start_server();
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv)) {
    perror("socketpair");
    abort();
  }
  if ((rc = http_open_fd(srv, sv[0])) != 0) {
    fprintf(fz_err, "fuzz: http_open_fd: %s\n", uv_strerror(rc));
    abort();
  }
  out_len = 0;
  t0 = uv_hrtime();
  while (uv_hrtime() - t0 < (uint64_t)SETTLE_MS * 1000000) {
    if (off < size) {
      ssize_t n = write(sv[1], data + off, size - off);
      if (n > 0)
        off += (size_t)n;
      else if (n < 0 && errno != EAGAIN)
        off = size; /* the server closed */
    }
    fz_turn(1);
    drain(sv[1]);
    if (off == size && settled()) break;
  }
  close(sv[1]);
  t0 = uv_hrtime();
  while (srv->nconns > 0) {
    if (uv_hrtime() - t0 > (uint64_t)CLOSE_MS * 1000000) {
      fprintf(fz_err, "fuzz: the server kept the connection\n");
      abort();
    }
    fz_turn(1);
  }
  check_responses(data, size);
  fz_after();
  return 0;
}
