/*
** fs: files and directories on libuv's thread pool (uv_fs_* with
** callbacks), so a slow disk never blocks the loop. Each call suspends
** its task; failures return nil, "io: <path>: <reason>", "<ECODE>".
**
** An operation is a chain of requests (open, fstat, read..., close) in one
** malloc'd fs_op that lives until its last callback. If the task is
** cancelled, the pending request is uv_cancel'ed when it has not started;
** otherwise the chain stops at the next callback, closes what it opened
** and frees itself: the task is never resumed by it.
**
** mkdir {parents}, remove {recursive} and exists are in lua/fs.lua, on
** the primitives here.
*/
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bindings.h"

#define FS_LINES_MT "asynchost.fs.lines"
#define CHUNK 65536
#define MAX_IO ((size_t)1 << 30) /* per read/write request */

/* Per host: what is in flight, so freeing the host can wait for it. */
typedef struct fs_state {
  ah_host *host;
  int inflight;
  int closing; /* the host is being freed: close descriptors at once */
  int guard_expired;
  uv_timer_t guard; /* bounds the wait for requests when the host closes */
} fs_state;

enum {
  K_READ,
  K_WRITE,
  K_APPEND,
  K_OPEN,
  K_STAT,
  K_LSTAT,
  K_SCANDIR,
  K_MKDIR,
  K_RMDIR,
  K_UNLINK,
  K_RENAME
};
enum { S_ONE, S_OPEN, S_FSTAT, S_READ, S_WRITE, S_CLOSE };

typedef struct fs_op {
  uv_fs_t req;
  fs_state *st;
  ah_task *task; /* NULL once abandoned */
  int kind, step, err, scanned;
  uv_file fd;
  char *buf;
  size_t len, cap, off;
  uv_stat_t sb;
  const char *path2; /* rename's target, in path's allocation */
  char path[];
} fs_op;

static void track(fs_state *st, int delta) {
  st->inflight += delta;
  ah_host_count(st->host, "fs", delta);
}

static void op_free(fs_op *op) {
  if (op->scanned) uv_fs_req_cleanup(&op->req);
  track(op->st, -1);
  free(op->buf);
  free(op);
}

static fs_op *op_new(lua_State *L, fs_state *st, int kind, const char *path,
                     const char *path2) {
  size_t n = strlen(path) + 1, n2 = path2 ? strlen(path2) + 1 : 0;
  fs_op *op = calloc(1, sizeof *op + n + n2);
  if (!op) {
    luaL_error(L, "fs: out of memory");
    return NULL;
  }
  memcpy(op->path, path, n);
  if (path2) {
    memcpy(op->path + n, path2, n2);
    op->path2 = op->path + n;
  }
  op->st = st;
  op->kind = kind;
  op->fd = -1;
  op->req.data = op;
  track(st, 1);
  return op;
}

static uv_loop_t *loop_of(fs_op *op) {
  return ah_host_loop(op->st->host);
}

/* The chain is over: wake the task, or free an abandoned op. */
static void finish(fs_op *op) {
  if (op->task)
    ah_task_resume(op->task);
  else
    op_free(op);
}

static void on_fs(uv_fs_t *req);

/* A request that failed to start never calls back: close and finish. */
static void failed_to_start(fs_op *op, int err) {
  if (!op->err) op->err = err;
  if (op->fd >= 0) {
    uv_fs_t close_req;
    uv_fs_close(loop_of(op), &close_req, op->fd, NULL); /* rare: sync */
    uv_fs_req_cleanup(&close_req);
    op->fd = -1;
  }
  finish(op);
}

static void step_close(fs_op *op) {
  int rc;
  op->step = S_CLOSE;
  rc = uv_fs_close(loop_of(op), &op->req, op->fd, on_fs);
  if (rc < 0) {
    op->fd = -1;
    failed_to_start(op, rc);
  }
}

static void step_read(fs_op *op) {
  uv_buf_t b;
  int rc;
  if (op->len == op->cap) {
    size_t cap = op->cap ? op->cap * 2 : CHUNK;
    char *nb = realloc(op->buf, cap);
    if (!nb) {
      op->err = UV_ENOMEM;
      step_close(op);
      return;
    }
    op->buf = nb;
    op->cap = cap;
  }
  b = uv_buf_init(
      op->buf + op->len,
      (unsigned)(op->cap - op->len > MAX_IO ? MAX_IO : op->cap - op->len));
  op->step = S_READ;
  rc = uv_fs_read(loop_of(op), &op->req, op->fd, &b, 1, -1, on_fs);
  if (rc < 0) {
    op->err = rc;
    step_close(op);
  }
}

static void step_write(fs_op *op) {
  uv_buf_t b;
  size_t n = op->len - op->off;
  int rc;
  if (n == 0) {
    step_close(op);
    return;
  }
  b = uv_buf_init(op->buf + op->off, (unsigned)(n > MAX_IO ? MAX_IO : n));
  op->step = S_WRITE;
  rc = uv_fs_write(loop_of(op), &op->req, op->fd, &b, 1, -1, on_fs);
  if (rc < 0) {
    op->err = rc;
    step_close(op);
  }
}

static void on_fs(uv_fs_t *req) {
  fs_op *op = req->data;
  ssize_t r = req->result;
  if (op->kind == K_SCANDIR && r >= 0 && op->task) {
    op->scanned = 1; /* the names stay in req until the continuation */
    finish(op);
    return;
  }
  if (r == 0 &&
      (op->kind == K_STAT || op->kind == K_LSTAT || op->step == S_FSTAT))
    op->sb = req->statbuf;
  uv_fs_req_cleanup(req);
  if (op->step == S_OPEN && r >= 0) op->fd = (uv_file)r;
  if (op->step == S_CLOSE) op->fd = -1;
  if (!op->task) { /* abandoned: close what was opened, then go away */
    if (op->fd >= 0)
      step_close(op);
    else
      op_free(op);
    return;
  }
  if (r < 0 && !op->err) op->err = (int)r;
  switch (op->step) {
  case S_OPEN:
    if (r < 0 || op->kind == K_OPEN) {
      finish(op);
    } else if (op->kind == K_READ) {
      int rc;
      op->step = S_FSTAT;
      rc = uv_fs_fstat(loop_of(op), &op->req, op->fd, on_fs);
      if (rc < 0) failed_to_start(op, rc);
    } else
      step_write(op);
    break;
  case S_FSTAT:
    if (r < 0) {
      step_close(op);
      break;
    }
    /* room for the whole file and the 0-byte read that ends it */
    op->cap = (size_t)op->sb.st_size + 1;
    if (op->cap < CHUNK) op->cap = CHUNK;
    op->buf = malloc(op->cap);
    if (!op->buf) {
      op->cap = 0;
      op->err = UV_ENOMEM;
      step_close(op);
      break;
    }
    step_read(op);
    break;
  case S_READ:
    if (r <= 0) {
      step_close(op);
    } else {
      op->len += (size_t)r;
      step_read(op);
    }
    break;
  case S_WRITE:
    if (r < 0) {
      step_close(op);
    } else {
      op->off += (size_t)r;
      step_write(op);
    }
    break;
  default: /* S_ONE, S_CLOSE */
    finish(op);
  }
}

static void fs_cancel(void *data) {
  fs_op *op = data;
  op->task = NULL;
  uv_cancel((uv_req_t *)&op->req); /* on_fs then sees UV_ECANCELED */
}

/* ---- results ------------------------------------------------------------- */

static int push_error(lua_State *L, const char *path, int err) {
  ah_push_fail(L, "io", "%s: %s", path, uv_strerror(err));
  lua_pushstring(L, uv_err_name(err));
  return 3;
}

static const char *type_name(uint64_t mode) {
  switch (mode & S_IFMT) {
  case S_IFREG:
    return "file";
  case S_IFDIR:
    return "directory";
  case S_IFLNK:
    return "link";
  case S_IFIFO:
    return "fifo";
  case S_IFSOCK:
    return "socket";
  case S_IFCHR:
    return "char";
  case S_IFBLK:
    return "block";
  default:
    return "unknown";
  }
}

static void set_time(lua_State *L, const char *name, uv_timespec_t ts) {
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  lua_setfield(L, -2, name);
}

static void push_stat(lua_State *L, const uv_stat_t *sb) {
  lua_createtable(L, 0, 9);
  lua_pushinteger(L, (lua_Integer)sb->st_size);
  lua_setfield(L, -2, "size");
  set_time(L, "mtime", sb->st_mtim);
  set_time(L, "atime", sb->st_atim);
  set_time(L, "ctime", sb->st_ctim);
  lua_pushstring(L, type_name(sb->st_mode));
  lua_setfield(L, -2, "type");
  lua_pushinteger(L, (lua_Integer)(sb->st_mode & 07777));
  lua_setfield(L, -2, "mode");
  lua_pushinteger(L, (lua_Integer)sb->st_uid);
  lua_setfield(L, -2, "uid");
  lua_pushinteger(L, (lua_Integer)sb->st_gid);
  lua_setfield(L, -2, "gid");
  lua_pushinteger(L, (lua_Integer)sb->st_nlink);
  lua_setfield(L, -2, "nlink");
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The names in req (uv_fs_scandir_next frees each entry on the next
   call, so they are copied), sorted. */
static int push_names(lua_State *L, fs_op *op) {
  uv_dirent_t ent;
  char **names = NULL;
  size_t n = 0, cap = 0, i;
  int oom = 0;
  while (!oom && uv_fs_scandir_next(&op->req, &ent) != UV_EOF) {
    if (n == cap) {
      char **nn;
      cap = cap ? cap * 2 : 64;
      nn = realloc(names, cap * sizeof *names);
      if (!nn) {
        oom = 1;
        break;
      }
      names = nn;
    }
    names[n] = strdup(ent.name);
    if (!names[n])
      oom = 1;
    else
      n++;
  }
  op_free(op);
  if (!oom) {
    if (n > 1) qsort(names, n, sizeof *names, cmp_names);
    lua_createtable(L, (int)n, 0);
  }
  for (i = 0; i < n; i++) {
    if (!oom) {
      lua_pushstring(L, names[i]);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    free(names[i]);
  }
  free(names);
  if (oom) return luaL_error(L, "fs.list: out of memory");
  return 1;
}

static int open_lines(lua_State *L, fs_op *op);

static int fs_k(lua_State *L, int status, lua_KContext ctx) {
  fs_op *op = (fs_op *)ctx;
  (void)status;
  if (op->err) {
    int n = push_error(L, op->path, op->err), kind = op->kind;
    op_free(op);
    if (kind == K_OPEN) { /* fs.lines raises, as io.lines does */
      lua_pop(L, 1);
      return lua_error(L);
    }
    return n;
  }
  switch (op->kind) {
  case K_READ:
    lua_pushlstring(L, op->buf ? op->buf : "", op->len);
    break;
  case K_STAT:
  case K_LSTAT:
    push_stat(L, &op->sb);
    break;
  case K_SCANDIR:
    return push_names(L, op);
  case K_OPEN:
    return open_lines(L, op);
  default:
    lua_pushboolean(L, 1);
  }
  op_free(op);
  return 1;
}

/* Starts op's first request and suspends; rc is what the uv_fs_* call
   returned (a request that failed to start never calls back). */
static int start(lua_State *L, fs_op *op, ah_task *t, int rc) {
  if (rc < 0) {
    int n = push_error(L, op->path, rc);
    op_free(op);
    return n;
  }
  op->task = t;
  return ah_task_suspend(L, fs_cancel, op, fs_k, (lua_KContext)op);
}

/* ---- the functions ------------------------------------------------------- */

static fs_state *state(lua_State *L) {
  return lua_touserdata(L, lua_upvalueindex(1));
}

static const char *check_path(lua_State *L, int idx) {
  size_t len;
  const char *p = luaL_checklstring(L, idx, &len);
  luaL_argcheck(L, strlen(p) == len, idx, "path contains a zero byte");
  luaL_argcheck(L, len > 0, idx, "path is empty");
  return p;
}

/* fs.read(path) -> string */
static int l_read(lua_State *L) {
  const char *path = check_path(L, 1);
  ah_task *t = ah_task_check(L, "fs.read");
  fs_op *op = op_new(L, state(L), K_READ, path, NULL);
  op->step = S_OPEN;
  return start(L, op, t,
               uv_fs_open(loop_of(op), &op->req, op->path,
                          UV_FS_O_RDONLY | O_CLOEXEC, 0, on_fs));
}

static int write_common(lua_State *L, int kind, const char *fname) {
  const char *path = check_path(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  ah_task *t = ah_task_check(L, fname);
  fs_op *op = op_new(L, state(L), kind, path, NULL);
  int flags = UV_FS_O_WRONLY | UV_FS_O_CREAT | O_CLOEXEC |
              (kind == K_APPEND ? UV_FS_O_APPEND : UV_FS_O_TRUNC);
  /* a copy: a cancelled call's Lua string may be collected mid-write */
  op->buf = malloc(len ? len : 1);
  if (!op->buf) {
    op_free(op);
    return luaL_error(L, "%s: out of memory", fname);
  }
  memcpy(op->buf, data, len);
  op->len = op->cap = len;
  op->step = S_OPEN;
  return start(L, op, t,
               uv_fs_open(loop_of(op), &op->req, op->path, flags, 0666, on_fs));
}

/* fs.write(path, data) -> true */
static int l_write(lua_State *L) {
  return write_common(L, K_WRITE, "fs.write");
}

/* fs.append(path, data) -> true */
static int l_append(lua_State *L) {
  return write_common(L, K_APPEND, "fs.append");
}

static int stat_common(lua_State *L, int kind, const char *fname) {
  const char *path = check_path(L, 1);
  ah_task *t = ah_task_check(L, fname);
  fs_op *op = op_new(L, state(L), kind, path, NULL);
  op->step = S_ONE;
  return start(L, op, t,
               kind == K_STAT
                   ? uv_fs_stat(loop_of(op), &op->req, op->path, on_fs)
                   : uv_fs_lstat(loop_of(op), &op->req, op->path, on_fs));
}

/* fs.stat(path) -> {size, mtime, atime, ctime, type, mode, uid, gid, nlink} */
static int l_stat(lua_State *L) {
  return stat_common(L, K_STAT, "fs.stat");
}

/* fs.lstat(path): fs.stat without following a symbolic link */
static int l_lstat(lua_State *L) {
  return stat_common(L, K_LSTAT, "fs.lstat");
}

/* fs.list(dir) -> sorted names, without "." and ".." */
static int l_list(lua_State *L) {
  const char *path = check_path(L, 1);
  ah_task *t = ah_task_check(L, "fs.list");
  fs_op *op = op_new(L, state(L), K_SCANDIR, path, NULL);
  op->step = S_ONE;
  return start(L, op, t,
               uv_fs_scandir(loop_of(op), &op->req, op->path, 0, on_fs));
}

/* fs.rename(from, to) -> true */
static int l_rename(lua_State *L) {
  const char *from = check_path(L, 1), *to = check_path(L, 2);
  ah_task *t = ah_task_check(L, "fs.rename");
  fs_op *op = op_new(L, state(L), K_RENAME, from, to);
  op->step = S_ONE;
  return start(L, op, t,
               uv_fs_rename(loop_of(op), &op->req, op->path, op->path2, on_fs));
}

/* primitives for lua/fs.lua: mkdir(path, mode), rmdir(path), unlink(path) */
static int l_mkdir(lua_State *L) {
  const char *path = check_path(L, 1);
  lua_Integer mode = luaL_optinteger(L, 2, 0777);
  ah_task *t = ah_task_check(L, "fs.mkdir");
  fs_op *op = op_new(L, state(L), K_MKDIR, path, NULL);
  op->step = S_ONE;
  return start(L, op, t,
               uv_fs_mkdir(loop_of(op), &op->req, op->path, (int)mode, on_fs));
}

static int l_rmdir(lua_State *L) {
  const char *path = check_path(L, 1);
  ah_task *t = ah_task_check(L, "fs.remove");
  fs_op *op = op_new(L, state(L), K_RMDIR, path, NULL);
  op->step = S_ONE;
  return start(L, op, t, uv_fs_rmdir(loop_of(op), &op->req, op->path, on_fs));
}

static int l_unlink(lua_State *L) {
  const char *path = check_path(L, 1);
  ah_task *t = ah_task_check(L, "fs.remove");
  fs_op *op = op_new(L, state(L), K_UNLINK, path, NULL);
  op->step = S_ONE;
  return start(L, op, t, uv_fs_unlink(loop_of(op), &op->req, op->path, on_fs));
}

/* ---- fs.lines ------------------------------------------------------------
   The iterator's file lives in a malloc'd lines_file that the Lua box
   points to. A read in flight owns it: if the box is closed meanwhile,
   the read's callback closes the descriptor and frees it. */

typedef struct lines_file {
  fs_state *st;
  uv_file fd;
  uv_fs_t req; /* the read, or the final close */
  ah_task *waiter;
  char *buf;
  size_t len, cap;
  int eof, err, reading, orphan, keep_nl;
  char chunk[CHUNK];
  char path[];
} lines_file;

static void lf_closed(uv_fs_t *req) {
  lines_file *lf = req->data;
  uv_fs_req_cleanup(req);
  track(lf->st, -1);
  free(lf->buf);
  free(lf);
}

/* Closes the descriptor (on the thread pool) and frees lf. */
static void lf_close(lines_file *lf) {
  lf->req.data = lf; /* also when no read ever used req */
  if (lf->fd >= 0 && !lf->st->closing) {
    track(lf->st, 1);
    if (uv_fs_close(ah_host_loop(lf->st->host), &lf->req, lf->fd, lf_closed) ==
        0)
      return;
    track(lf->st, -1);
  }
  if (lf->fd >= 0) { /* the host is going away: no loop to wait on */
    uv_fs_t req;
    uv_fs_close(ah_host_loop(lf->st->host), &req, lf->fd, NULL);
    uv_fs_req_cleanup(&req);
  }
  free(lf->buf);
  free(lf);
}

static void lf_read_done(uv_fs_t *req) {
  lines_file *lf = req->data;
  ssize_t n = req->result;
  uv_fs_req_cleanup(req);
  lf->reading = 0;
  track(lf->st, -1);
  if (lf->orphan) {
    lf_close(lf);
    return;
  }
  if (n > 0) {
    if (lf->len + (size_t)n > lf->cap) {
      size_t cap = lf->cap ? lf->cap * 2 : CHUNK;
      char *nb;
      while (cap < lf->len + (size_t)n) cap *= 2;
      nb = realloc(lf->buf, cap);
      if (!nb) {
        lf->err = UV_ENOMEM;
        lf->eof = 1;
        n = 0;
      } else {
        lf->buf = nb;
        lf->cap = cap;
      }
    }
    if (n > 0) {
      memcpy(lf->buf + lf->len, lf->chunk, (size_t)n);
      lf->len += (size_t)n;
    }
  } else if (n == 0) {
    lf->eof = 1;
  } else if (n != UV_ECANCELED) {
    lf->err = (int)n;
    lf->eof = 1;
  }
  if (lf->waiter) {
    ah_task *t = lf->waiter;
    lf->waiter = NULL;
    ah_task_resume(t);
  }
}

static int lf_start_read(lines_file *lf) {
  uv_buf_t b = uv_buf_init(lf->chunk, CHUNK);
  int rc;
  lf->req.data = lf;
  rc = uv_fs_read(ah_host_loop(lf->st->host), &lf->req, lf->fd, &b, 1, -1,
                  lf_read_done);
  if (rc < 0) {
    lf->err = rc;
    lf->eof = 1;
    return 0;
  }
  lf->reading = 1;
  track(lf->st, 1);
  return 1;
}

static void lines_cancel(void *data) {
  lines_file *lf = data;
  lf->waiter = NULL;
  uv_cancel((uv_req_t *)&lf->req); /* if it has not started; else kept */
}

/* The box's __close and __gc: closes the file (once). */
static int lines_release(lua_State *L) {
  lines_file **box = luaL_checkudata(L, 1, FS_LINES_MT);
  lines_file *lf = *box;
  *box = NULL;
  if (!lf) return 0;
  if (lf->reading)
    lf->orphan = 1;
  else
    lf_close(lf);
  return 0;
}

static int lines_k(lua_State *L, int status, lua_KContext ctx);

/* The iterator: the next line, or nil at the end (the file is closed). */
static int lines_iter(lua_State *L) {
  lines_file **box = lua_touserdata(L, lua_upvalueindex(1));
  lines_file *lf = *box;
  char *nl;
  ah_task *t;
  if (!lf) return luaL_error(L, "file is already closed");
  nl = lf->len ? memchr(lf->buf, '\n', lf->len) : NULL;
  if (nl || (lf->eof && lf->len > 0 && !lf->err)) {
    size_t n = nl ? (size_t)(nl - lf->buf) + 1 : lf->len;
    lua_pushlstring(L, lf->buf, (nl && !lf->keep_nl) ? n - 1 : n);
    memmove(lf->buf, lf->buf + n, lf->len - n);
    lf->len -= n;
    return 1;
  }
  if (lf->eof) {
    int err = lf->err;
    *box = NULL;
    if (err) {
      lua_pushfstring(L, "io: %s: %s", lf->path, uv_strerror(err));
      lf_close(lf);
      return lua_error(L);
    }
    lf_close(lf);
    lua_pushnil(L);
    return 1;
  }
  t = ah_task_check(L, "fs.lines");
  if (!lf->reading && !lf_start_read(lf)) return lines_iter(L);
  lf->waiter = t;
  return ah_task_suspend(L, lines_cancel, lf, lines_k, 0);
}

static int lines_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lines_iter(L);
}

/* The K_OPEN continuation: [path fmt] -> iterator, nil, nil, box */
static int open_lines(lua_State *L, fs_op *op) {
  size_t n = strlen(op->path) + 1;
  lines_file **box = lua_newuserdatauv(L, sizeof *box, 0);
  lines_file *lf;
  *box = NULL;
  luaL_setmetatable(L, FS_LINES_MT);
  lf = calloc(1, sizeof *lf + n);
  if (!lf) {
    uv_fs_t req;
    uv_fs_close(loop_of(op), &req, op->fd, NULL);
    uv_fs_req_cleanup(&req);
    op_free(op);
    return luaL_error(L, "fs.lines: out of memory");
  }
  lf->st = op->st;
  lf->fd = op->fd;
  {
    const char *fmt = luaL_optstring(L, 2, "l");
    lf->keep_nl = fmt[0] == 'L' || (fmt[0] == '*' && fmt[1] == 'L');
  }
  memcpy(lf->path, op->path, n);
  *box = lf;
  op_free(op);
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, lines_iter, 1);
  lua_pushnil(L);
  lua_pushnil(L);
  lua_pushvalue(L, -4); /* box iter nil nil box */
  return 4;
}

/* fs.lines(path [, "l"|"L"]) -> iterator (raises "io: ..." if the file
   cannot be opened, as io.lines does) */
static int l_lines(lua_State *L) {
  const char *path = check_path(L, 1);
  const char *fmt = luaL_optstring(L, 2, "l");
  ah_task *t;
  fs_op *op;
  if (*fmt == '*') fmt++;
  luaL_argcheck(L, (*fmt == 'l' || *fmt == 'L') && fmt[1] == '\0', 2,
                "invalid format (\"l\" or \"L\")");
  lua_settop(L, 2);
  t = ah_task_check(L, "fs.lines");
  op = op_new(L, state(L), K_OPEN, path, NULL);
  op->step = S_OPEN;
  return start(L, op, t,
               uv_fs_open(loop_of(op), &op->req, op->path,
                          UV_FS_O_RDONLY | O_CLOEXEC, 0, on_fs));
}

/* ---- the host's life ----------------------------------------------------- */

static void on_guard(uv_timer_t *timer) {
  ((fs_state *)timer->data)->guard_expired = 1;
}

/* The host is being freed: let the requests in flight call back (the
   thread pool may still be writing into them), then close descriptors
   synchronously from here on. A request stuck in the kernel (opening a
   FIFO nobody writes to) is waited for 2 s at most, then left behind:
   the host's loop must not be run again after that. */
static void fs_on_close(ah_host *h, void *data) {
  fs_state *st = data;
  if (st->inflight > 0) {
    uv_timer_init(ah_host_loop(h), &st->guard);
    st->guard.data = st;
    uv_timer_start(&st->guard, on_guard, 2000, 0);
    while (st->inflight > 0 && !st->guard_expired)
      uv_run(ah_host_loop(h), UV_RUN_ONCE);
    ah_host_close_handle(h, (uv_handle_t *)&st->guard, NULL);
  }
  st->closing = 1;
}

static const char state_key = 'f';

void ah_open_fs(lua_State *L, int mod) {
  static const luaL_Reg funcs[] = {
      {"read", l_read},   {"write", l_write},   {"append", l_append},
      {"lines", l_lines}, {"stat", l_stat},     {"lstat", l_lstat},
      {"list", l_list},   {"rename", l_rename}, {NULL, NULL}};
  static const luaL_Reg raw[] = {{"mkdir", l_mkdir},
                                 {"rmdir", l_rmdir},
                                 {"unlink", l_unlink},
                                 {NULL, NULL}};
  fs_state *st = lua_newuserdatauv(L, sizeof *st, 0);
  st->host = ah_host_of(L);
  st->inflight = 0;
  st->closing = 0;
  st->guard_expired = 0;
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &state_key); /* lives as long as L */
  if (ah_host_hook(st->host, AH_ON_CLOSE, fs_on_close, st) != AH_OK)
    luaL_error(L, "fs: out of memory");
  if (luaL_newmetatable(L, FS_LINES_MT)) {
    lua_pushcfunction(L, lines_release);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, lines_release);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  lua_newtable(L); /* st fs */
  lua_pushvalue(L, -2);
  luaL_setfuncs(L, funcs, 1);
  lua_newtable(L); /* st fs raw */
  lua_pushvalue(L, -3);
  luaL_setfuncs(L, raw, 1);
  lua_setfield(L, -2, "_raw");
  lua_setfield(L, mod, "fs");
  lua_pop(L, 1);
  /* lua/fs.lua: mkdir, remove, exists on the primitives */
  lua_getfield(L, mod, "_load");
  lua_pushliteral(L, "fs");
  lua_call(L, 1, 1);
  lua_pushvalue(L, mod);
  lua_call(L, 1, 0);
}
