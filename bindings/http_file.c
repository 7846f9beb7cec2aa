/*
** Static files for app:static(): open and stat on libuv's thread pool,
** then read 64 KiB at a time (uv_fs_read) and write each piece before
** reading the next, so a big file costs one buffer and a slow client
** holds back the reads. The handler task waits until the file is out.
*/
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "http_internal.h"

#define FILE_CHUNK 65536

enum { F_OPENING, F_READY, F_SENDING, F_DONE };

typedef struct file_op {
  uv_fs_t fs;
  uv_write_t wr;
  uv_loop_t *loop;
  http_conn *conn;
  ah_task *task;
  uv_file fd;
  int phase, err, cancelled, before_head;
  int64_t size, off;
  double mtime;
  char buf[FILE_CHUNK];
} file_op;

static void op_finish(file_op *op, int err);

static void resume_or_free(file_op *op) {
  if (op->cancelled) {
    free(op);
    return;
  }
  op->phase = F_DONE;
  ah_task_resume(op->task);
}

static void on_closed(uv_fs_t *req) {
  file_op *op = req->data;
  uv_fs_req_cleanup(req);
  resume_or_free(op);
}

/* Closes the file (on the thread pool) and wakes the task, or frees the
   operation if the task was cancelled meanwhile. */
static void op_finish(file_op *op, int err) {
  if (err && !op->err) op->err = err;
  if (op->fd >= 0) {
    uv_file fd = op->fd;
    op->fd = -1;
    op->fs.data = op;
    if (uv_fs_close(op->loop, &op->fs, fd, on_closed) == 0) return;
  }
  resume_or_free(op);
}

static void read_next(file_op *op);

static void on_file_write(uv_write_t *req, int status) {
  file_op *op = req->data;
  if (status < 0 || op->cancelled) {
    op_finish(op, status < 0 ? status : UV_ECANCELED);
    return;
  }
  read_next(op);
}

static void on_file_read(uv_fs_t *req) {
  file_op *op = req->data;
  ssize_t n = req->result;
  uv_buf_t b;
  uv_fs_req_cleanup(req);
  if (op->cancelled) {
    op_finish(op, UV_ECANCELED);
    return;
  }
  if (n <= 0) { /* an error, or the file got shorter than its size */
    op_finish(op, n < 0 ? (int)n : UV_EIO);
    return;
  }
  op->off += n;
  b = uv_buf_init(op->buf, (unsigned)n);
  op->wr.data = op;
  if (op->conn->closing || uv_write(&op->wr, (uv_stream_t *)&op->conn->tcp, &b,
                                    1, on_file_write) != 0)
    op_finish(op, UV_ECANCELED);
}

static void read_next(file_op *op) {
  int64_t left = op->size - op->off;
  uv_buf_t b;
  if (left <= 0) {
    op_finish(op, 0);
    return;
  }
  b = uv_buf_init(op->buf, (unsigned)(left < FILE_CHUNK ? left : FILE_CHUNK));
  op->fs.data = op;
  if (uv_fs_read(op->loop, &op->fs, op->fd, &b, 1, op->off, on_file_read) != 0)
    op_finish(op, UV_EIO);
}

static void on_stat(uv_fs_t *req) {
  file_op *op = req->data;
  int rc = (int)req->result;
  if (rc == 0) {
    if (!S_ISREG(req->statbuf.st_mode))
      rc = S_ISDIR(req->statbuf.st_mode) ? UV_EISDIR : UV_ENOENT;
    op->size = (int64_t)req->statbuf.st_size;
    op->mtime = (double)req->statbuf.st_mtim.tv_sec;
  }
  uv_fs_req_cleanup(req);
  if (op->cancelled || rc != 0) {
    op->before_head = 1;
    op_finish(op, op->cancelled ? UV_ECANCELED : rc);
    return;
  }
  op->phase = F_READY;
  ah_task_resume(op->task);
}

static void on_open(uv_fs_t *req) {
  file_op *op = req->data;
  int rc = (int)req->result;
  uv_fs_req_cleanup(req);
  if (rc >= 0) op->fd = rc;
  if (op->cancelled || rc < 0) {
    op->before_head = 1;
    op_finish(op, op->cancelled ? UV_ECANCELED : rc);
    return;
  }
  op->fs.data = op;
  if (uv_fs_fstat(op->loop, &op->fs, op->fd, on_stat) != 0) {
    op->before_head = 1;
    op_finish(op, UV_EIO);
  }
}

static void file_cancel(void *data) {
  ((file_op *)data)->cancelled = 1; /* the callback in flight frees it */
}

static int push_error(lua_State *L, file_op *op) {
  const char *path = lua_tostring(L, 2);
  int before = op->before_head, err = op->err;
  free(op);
  lua_pushnil(L);
  lua_pushfstring(L, "io: %s: %s", path, uv_strerror(err));
  if (!before) return 2;
  lua_pushstring(L, err == UV_ENOENT || err == UV_EISDIR || err == UV_ENOTDIR
                        ? "missing"
                    : err == UV_EACCES || err == UV_EPERM ? "forbidden"
                                                          : "failed");
  return 3;
}

static int sendfile_k(lua_State *L, int status, lua_KContext ctx) {
  file_op *op = (file_op *)ctx;
  http_conn *c;
  http_wreq *w;
  char err[256], date[64];
  time_t mt;
  struct tm tm;
  (void)status;
  if (op->phase == F_DONE) {
    if (op->err) return push_error(L, op);
    free(op);
    lua_pushboolean(L, 1);
    return 1;
  }
  /* F_READY: the file is open; write the head, then the content */
  c = http_check_req(L, 1);
  if (!c || c->streaming) {
    op->before_head = 1;
    op_finish(op, UV_ECANCELED);
    return ah_task_suspend(L, file_cancel, op, sendfile_k, (lua_KContext)op);
  }
  op->conn = c;
  w = http_wreq_get(c->srv, 512);
  if (!w) {
    op->before_head = 1;
    op_finish(op, UV_ENOMEM);
    return ah_task_suspend(L, file_cancel, op, sendfile_k, (lua_KContext)op);
  }
  mt = (time_t)op->mtime;
  gmtime_r(&mt, &tm);
  strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  lua_settop(L, 4);
  if (!lua_istable(L, 4)) {
    lua_newtable(L);
    lua_replace(L, 4);
  }
  lua_pushstring(L, date);
  lua_setfield(L, 4, "Last-Modified");
  if (lua_type(L, 3) == LUA_TSTRING) { /* from http.content_types: checked */
    lua_pushvalue(L, 3);
    lua_setfield(L, 4, "Content-Type");
  }
  if (http_write_head(c, L, w, 200, 4, NULL, op->size, err, sizeof err) != 0) {
    http_wreq_put(c->srv, w);
    op->before_head = 1;
    op_finish(op, UV_EINVAL);
    return ah_task_suspend(L, file_cancel, op, sendfile_k, (lua_KContext)op);
  }
  c->streaming = 2;
  c->deadline = 0;
  c->status = 200;
  c->sent = (size_t)op->size;
  op->phase = F_SENDING;
  if (http_send(c, w, NULL, 0) != 0 || c->head_only)
    op_finish(op, c->head_only ? 0 : UV_ECANCELED);
  else
    read_next(op);
  return ah_task_suspend(L, file_cancel, op, sendfile_k, (lua_KContext)op);
}

/* sendfile(r, path, ctype [, headers]) -> true | nil, err [, why]
   why ("missing", "forbidden", "failed") is there when nothing was sent:
   the handler can still answer; otherwise the response is broken off. */
int http_l_sendfile(lua_State *L) {
  http_conn *c = http_check_req(L, 1);
  const char *path = luaL_checkstring(L, 2);
  ah_task *t;
  file_op *op;
  luaL_optstring(L, 3, NULL);
  lua_settop(L, 4);
  if (!c) return ah_push_fail(L, "closed", "the client went away");
  if (c->streaming) return luaL_error(L, "http: the response has begun");
  t = ah_task_check(L, "sendfile");
  op = calloc(1, sizeof *op);
  if (!op) return luaL_error(L, "http: out of memory");
  op->task = t;
  op->loop = ah_host_loop(ah_task_host(t));
  op->fd = -1;
  op->fs.data = op;
  if (uv_fs_open(op->loop, &op->fs, path, O_RDONLY | O_CLOEXEC, 0, on_open) !=
      0) {
    free(op);
    return ah_push_fail(L, "io", "%s: cannot open", path);
  }
  return ah_task_suspend(L, file_cancel, op, sendfile_k, (lua_KContext)op);
}
